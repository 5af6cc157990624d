// The workloads: fio with its nbd engine, throwaway sessions and the scale run's clients.

import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, readSync } from 'node:fs';
import type { ListenAddress } from '../../lib/server/listener.js';
import { NbdSession } from '../../test/helpers/raw-nbd/session.js';

export interface FioWorkload {
  readonly rw: 'read' | 'write' | 'randread' | 'randwrite' | 'randrw';
  /** A block size, or fio's bssplit (`4k/50:64k/40:1m/10`) when it has a '/'. */
  readonly bs: string;
  /** Per job (connection). */
  readonly iodepth: number;
  /** Time-based with a ramp; otherwise one pass capped at RUNTIME. */
  readonly timed: boolean;
  /** fio jobs, one NBD connection each (default 1); more than one: --group_reporting. */
  readonly numjobs?: number;
  /** randrw: percent of reads. */
  readonly rwmixread?: number;
}

/** The workload writes (so the memory priming before it applies). */
export const fioWrites = (w: FioWorkload): boolean => w.rw.includes('write') || w.rw === 'randrw';

export const FIO_WORKLOADS: Readonly<Record<string, FioWorkload>> = {
  'seq-read': { rw: 'read', bs: '1M', iodepth: 8, timed: true },
  // One pass over the whole export into an empty overlay, capped at RUNTIME, no ramp:
  // every write is a first write.
  'seq-write': { rw: 'write', bs: '1M', iodepth: 8, timed: false },
  'rand-read': { rw: 'randread', bs: '4k', iodepth: 32, timed: true },
  'rand-write': { rw: 'randwrite', bs: '4k', iodepth: 32, timed: true },
  'rand-read-qd1': { rw: 'randread', bs: '4k', iodepth: 1, timed: true },
  // Many clients: N connections (fio jobs) of QD32 each, the group's summed IOPS. Each job
  // ranges over the whole export with its own random sequence.
  'rand-read-4c': { rw: 'randread', bs: '4k', iodepth: 32, timed: true, numjobs: 4 },
  'rand-write-4c': { rw: 'randwrite', bs: '4k', iodepth: 32, timed: true, numjobs: 4 },
  'rand-read-16c': { rw: 'randread', bs: '4k', iodepth: 32, timed: true, numjobs: 16 },
  'rand-write-16c': { rw: 'randwrite', bs: '4k', iodepth: 32, timed: true, numjobs: 16 },
  // "VMs booting": 4 connections, each reading a spread of the image and writing a little:
  // random, 90 % reads, half the requests 4 KiB, 40 % 64 KiB, 10 % 1 MiB, QD 8 each.
  'boot-4c': { rw: 'randrw', bs: '4k/50:64k/40:1m/10', iodepth: 8, timed: true, numjobs: 4, rwmixread: 90 },
  // 16 VMs booting at once, reads only (bench/remote.ts: a cold remote base, where the point
  // is how often the same block is fetched): the same mix, 16 connections of QD 8.
  'boot-read-16c': { rw: 'randread', bs: '4k/50:64k/40:1m/10', iodepth: 8, timed: true, numjobs: 16 },
};

export const round = (x: number | null | undefined, d = 1): number | null =>
  x === null || x === undefined || Number.isNaN(x) ? null : Math.round(x * 10 ** d) / 10 ** d;

/** The message of anything thrown. */
export const errorText = (err: unknown): string => (err instanceof Error ? err.message : String(err));

export interface FioResult {
  readonly MiB_per_s: number | null;
  readonly iops: number;
  readonly lat_mean_us: number | null;
  readonly lat_p50_us: number | null;
  readonly lat_p99_us: number | null;
  readonly lat_p999_us: number | null;
  readonly lat_max_us: number | null;
  readonly io_bytes: number;
  readonly measured_s: number | null;
  /** fio jobs = NBD connections fio opened. */
  readonly numjobs: number;
  /** randrw: the two sides' IOPS (iops is their sum; latencies are the reads'). */
  readonly read_iops?: number;
  readonly write_iops?: number;
  readonly write_lat_mean_us?: number | null;
  readonly write_lat_p99_us?: number | null;
  /** fio's own CPU over the measured time (ramp excluded), all jobs: usr + sys seconds. */
  readonly fio_cpu_s: number | null;
  /** fio_cpu_s in percent of the measured seconds (100 = one core busy). */
  readonly fio_cpu_pct: number | null;
  /** The most established connections to the server seen while fio ran (ss); null: not sampled. */
  readonly connections_seen: number | null;
  readonly fio_error: number;
  readonly fio_args: string;
}

/** fio failed after it wrote its JSON: the numbers it has are in `partial`. */
export class FioError extends Error {
  readonly partial: FioResult;

  constructor(message: string, partial: FioResult) {
    super(message);
    this.partial = partial;
  }
}

/** The parts of fio's --output-format=json that are read here. */
interface FioSide {
  readonly bw_bytes: number;
  readonly iops: number;
  readonly io_bytes: number;
  readonly runtime: number;
  readonly lat_ns?: { readonly mean?: number; readonly max?: number; readonly percentile?: Readonly<Record<string, number>> };
}

interface FioJob {
  readonly error?: number;
  readonly read: FioSide;
  readonly write: FioSide;
  /** Percent of job_runtime (with --group_reporting: of the jobs' summed runtime). */
  readonly usr_cpu?: number;
  readonly sys_cpu?: number;
  /** ms; with --group_reporting the sum over the jobs. */
  readonly job_runtime?: number;
}

interface FioJson {
  readonly jobs?: readonly FioJob[];
}

export interface FioOptions {
  readonly runtime: number;
  readonly ramp: number;
  readonly outFile: string;
  readonly logFd: number;
  /** fio processes running now, so a signal can stop them. */
  readonly clients?: Set<ChildProcess>;
  /** fio's environment (default: ours); libnbd reads TLS certificates from $HOME/.pki/libnbd. */
  readonly env?: NodeJS.ProcessEnv | undefined;
  /** Established connections to the server now (sampled once a second while fio runs), or null. */
  readonly countConnections?: () => number | null;
}

/** Run one fio job against `uri`; resolves with parsed numbers or throws with fio's output. */
export function runFio(workload: string, uri: string, options: FioOptions): Promise<FioResult> {
  const { runtime, ramp, outFile, logFd, clients = new Set<ChildProcess>() } = options;
  const w = FIO_WORKLOADS[workload];
  if (w === undefined) return Promise.reject(new Error(`unknown fio workload '${workload}'`));
  const numjobs = w.numjobs ?? 1;
  const args = [
    `--name=${workload}`,
    '--ioengine=nbd',
    `--uri=${uri}`,
    `--numjobs=${numjobs}`,
    ...(numjobs > 1 ? ['--group_reporting'] : []),
    `--rw=${w.rw}`,
    ...(w.rwmixread === undefined ? [] : [`--rwmixread=${w.rwmixread}`]),
    w.bs.includes('/') ? `--bssplit=${w.bs}` : `--bs=${w.bs}`,
    `--iodepth=${w.iodepth}`,
    `--runtime=${runtime}`,
    '--lat_percentiles=1',
    '--percentile_list=50:99:99.9',
    '--output-format=json',
    `--output=${outFile}`,
  ];
  if (w.timed) args.push('--time_based', `--ramp_time=${ramp}`);
  return new Promise((resolve, reject) => {
    const child = spawn('fio', args, { stdio: ['ignore', logFd, logFd], env: options.env ?? process.env });
    clients.add(child);
    const limit = (runtime + ramp + 60) * 1000;
    const timer = setTimeout(() => child.kill('SIGKILL'), limit);
    let connectionsSeen: number | null = null;
    const sampler = options.countConnections
      ? setInterval(() => {
          const n = options.countConnections?.() ?? null;
          if (n !== null) connectionsSeen = Math.max(connectionsSeen ?? 0, n);
        }, 1000)
      : null;
    child.once('error', (e) => {
      clearTimeout(timer);
      if (sampler) clearInterval(sampler);
      reject(e);
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      if (sampler) clearInterval(sampler);
      clients.delete(child);
      let data: FioJson;
      try {
        data = JSON.parse(readFileSync(outFile, 'utf8')) as FioJson;
      } catch {
        reject(new Error(`fio exited with ${code ?? signal} and wrote no JSON`));
        return;
      }
      const job = data.jobs?.[0];
      if (!job) {
        reject(new Error('fio JSON has no job'));
        return;
      }
      const mixed = w.rw === 'randrw';
      const side = w.rw === 'write' || w.rw === 'randwrite' ? job.write : job.read;
      const lat = side.lat_ns ?? {};
      const pct = lat.percentile ?? {};
      const us = (ns: number | undefined): number | null => (ns === undefined ? null : round(ns / 1000));
      const measured = Math.max(job.read.runtime, job.write.runtime) / 1000;
      const cpuS =
        job.job_runtime === undefined || job.usr_cpu === undefined || job.sys_cpu === undefined
          ? null
          : (((job.usr_cpu + job.sys_cpu) / 100) * job.job_runtime) / 1000;
      const result: FioResult = {
        MiB_per_s: round((mixed ? job.read.bw_bytes + job.write.bw_bytes : side.bw_bytes) / 1048576),
        iops: Math.round(mixed ? job.read.iops + job.write.iops : side.iops),
        lat_mean_us: us(lat.mean),
        lat_p50_us: us(pct['50.000000']),
        lat_p99_us: us(pct['99.000000']),
        lat_p999_us: us(pct['99.900000']),
        lat_max_us: us(lat.max),
        io_bytes: mixed ? job.read.io_bytes + job.write.io_bytes : side.io_bytes,
        measured_s: round(measured, 2),
        numjobs,
        ...(mixed
          ? {
              read_iops: Math.round(job.read.iops),
              write_iops: Math.round(job.write.iops),
              write_lat_mean_us: us(job.write.lat_ns?.mean),
              write_lat_p99_us: us(job.write.lat_ns?.percentile?.['99.000000']),
            }
          : {}),
        fio_cpu_s: round(cpuS, 2),
        fio_cpu_pct: cpuS === null || measured <= 0 ? null : Math.round((cpuS / measured) * 100),
        connections_seen: connectionsSeen,
        fio_error: job.error ?? 0,
        fio_args: args.filter((a) => !a.startsWith('--uri=') && !a.startsWith('--output=')).join(' '),
      };
      if (code !== 0 || result.fio_error !== 0) {
        reject(new FioError(`fio exited with ${code ?? signal}, job error ${result.fio_error}`, result));
        return;
      }
      const implausible = implausibleLatency(result);
      if (implausible !== null) {
        reject(new FioError(implausible, result));
        return;
      }
      resolve(result);
    });
  });
}

/**
 * Why fio's latencies cannot be a measurement, or null when they can: a mean longer than the
 * whole measured run, or above the largest latency. (One QD1 round of a `ROUNDS=3` run on
 * 2026-12-03 reported a mean of 74,088,286,916 µs in a 10 s run; the cell's median hid it, the
 * Rounds table did not.) Such a run counts as failed.
 */
export function implausibleLatency(result: Pick<FioResult, 'lat_mean_us' | 'lat_max_us' | 'measured_s'>): string | null {
  const { lat_mean_us: mean, lat_max_us: max, measured_s: measured } = result;
  if (mean === null) return null;
  if (measured !== null && measured > 0 && mean > measured * 1e6) {
    return `fio reported a mean latency of ${mean} µs in a run of ${measured} s: not a measurement`;
  }
  if (max !== null && mean > max) return `fio reported a mean latency of ${mean} µs above its largest, ${max} µs`;
  return null;
}

export function percentile(sorted: readonly number[], pct: number): number | null {
  if (sorted.length === 0) return null;
  const rank = Math.max(1, Math.round((pct / 100) * sorted.length));
  return sorted[Math.min(rank, sorted.length) - 1] ?? null;
}

/** Reads `length` bytes of the base at `offset` (for checking what the server returned). */
export function baseBytes(baseFd: number, offset: number, length: number): Buffer {
  const buf = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const n = readSync(baseFd, buf, done, length - done, offset + done);
    if (n === 0) break;
    done += n;
  }
  return buf;
}

const randomOffset = (size: number, length: number, align = 4096): number =>
  Math.floor(Math.random() * Math.floor((size - length) / align + 1)) * align;

export interface SessionsOptions {
  readonly target: ListenAddress;
  readonly exportName: string;
  readonly seconds: number;
  /**
   * Sessions run first for this long and not measured, as fio's ramp: a fresh nbd-cow reaches
   * its steady rate only after about 2 s of sessions (its JIT compiler and young generation
   * warming up). Their rate is reported apart (ramp_sessions_per_s). Default 0.
   */
  readonly rampSeconds?: number;
  /** The base, to compare every read with; null: not compared. */
  readonly baseFd: number | null;
  readonly expectSize: number;
  readonly bytes?: number;
}

export interface SessionsResult {
  readonly sessions: number;
  /** Sessions per second during the ramp (not measured); null without one. */
  readonly ramp_sessions_per_s: number | null;
  readonly measured_s: number | null;
  readonly sessions_per_s: number | null;
  readonly lat_mean_us: number | null;
  readonly lat_p50_us: number | null;
  readonly lat_p99_us: number | null;
  readonly errors: number;
  readonly mismatches: number;
  readonly verified: boolean;
  readonly last_error: string | null;
}

/** What one phase of runSessions saw; `failing` counts the failed sessions in a row at its end. */
interface SessionsPhase {
  readonly lat: number[];
  errors: number;
  mismatches: number;
  failing: number;
  lastError: string | null;
  readonly elapsedS: number;
}

/** Sessions one after the other until `deadline` (performance.now()), or until 50 fail in a row. */
async function sessionsUntil(options: SessionsOptions, deadline: number, failing: number): Promise<SessionsPhase> {
  const { target, exportName, baseFd, expectSize, bytes = 4096 } = options;
  const start = performance.now();
  const phase = { lat: [] as number[], errors: 0, mismatches: 0, failing, lastError: null as string | null };
  while (performance.now() < deadline && phase.failing < 50) {
    const t0 = performance.now();
    let data: Buffer;
    let offset: number;
    try {
      const c = await NbdSession.open(target, exportName);
      if (c.size !== expectSize) {
        c.destroy();
        throw new Error(`export size ${c.size}, expected ${expectSize}`);
      }
      offset = randomOffset(c.size, bytes);
      data = await c.pread(bytes, offset);
      await c.disconnect();
    } catch (err) {
      phase.errors++;
      phase.lastError = errorText(err);
      phase.failing++;
      continue;
    }
    phase.failing = 0;
    phase.lat.push((performance.now() - t0) * 1000);
    if (baseFd !== null && !data.equals(baseBytes(baseFd, offset, bytes))) phase.mismatches++;
  }
  return { ...phase, elapsedS: (performance.now() - start) / 1000 };
}

/**
 * Throwaway sessions for `rampSeconds` (not measured), then for `seconds`: connect, handshake,
 * read 4 KiB at a random aligned offset, NBD_CMD_DISC, wait for the close; one at a time. With
 * `baseFd`, every read is compared with the base (the ramp's too; its errors and mismatches count).
 */
export async function runSessions(options: SessionsOptions): Promise<SessionsResult> {
  const { seconds, baseFd, rampSeconds = 0 } = options;
  const ramp = rampSeconds > 0 ? await sessionsUntil(options, performance.now() + rampSeconds * 1000, 0) : null;
  // A ramp that stopped at 50 failures in a row (a server failing every session) counts as measured.
  const measured =
    ramp !== null && ramp.failing >= 50
      ? ramp
      : await sessionsUntil(options, performance.now() + seconds * 1000, ramp?.failing ?? 0);
  const warmup = ramp !== measured ? ramp : null;
  const { lat, elapsedS: elapsed } = measured;
  lat.sort((a, b) => a - b);
  return {
    sessions: lat.length,
    ramp_sessions_per_s: warmup === null ? null : round(warmup.lat.length / warmup.elapsedS),
    measured_s: round(elapsed, 3),
    sessions_per_s: elapsed > 0 ? round(lat.length / elapsed) : 0,
    lat_mean_us: lat.length ? round(lat.reduce((a, b) => a + b, 0) / lat.length) : null,
    lat_p50_us: round(percentile(lat, 50)),
    lat_p99_us: round(percentile(lat, 99)),
    errors: measured.errors + (warmup?.errors ?? 0),
    mismatches: measured.mismatches + (warmup?.mismatches ?? 0),
    verified: baseFd !== null,
    last_error: measured.lastError ?? warmup?.lastError ?? null,
  };
}

/** Run `fn(i)` for i in [0, n) with at most `limit` in flight. */
export async function pool(n: number, limit: number, fn: (i: number) => Promise<void>): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < n) {
      const i = next++;
      await fn(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, n) }, worker));
}

export interface OpenManyOptions {
  readonly target: ListenAddress;
  readonly exportName: string;
  readonly n: number;
  readonly concurrency: number;
  readonly mode: 'write' | 'read';
  readonly writeMinKiB: number;
  readonly writeMaxKiB: number;
  readonly baseFd: number | null;
}

export interface OpenedMany {
  readonly conns: NbdSession[];
  readonly errors: number;
  readonly mismatches: number;
  readonly bytesWritten: number;
  readonly firstError: string | null;
  readonly openSeconds: number;
}

/**
 * Open `n` connections and keep them. mode 'write': each writes a random-sized
 * (writeMin..writeMax KiB, 4 KiB multiples) block of random bytes at a random aligned
 * offset and reads it back; mode 'read': each reads 4 KiB at a random offset and checks it
 * against the base. Returns the open connections and counts.
 */
export async function openMany(options: OpenManyOptions): Promise<OpenedMany> {
  const { target, exportName, n, concurrency, mode, writeMinKiB, writeMaxKiB, baseFd } = options;
  const conns: NbdSession[] = [];
  let errors = 0;
  let mismatches = 0;
  let bytesWritten = 0;
  let firstError: string | null = null;
  const t0 = performance.now();
  await pool(n, concurrency, async () => {
    let c: NbdSession | null = null;
    try {
      c = await NbdSession.open(target, exportName, { timeoutMs: 30000 });
      if (mode === 'write') {
        const blocks = writeMinKiB / 4 + Math.floor(Math.random() * ((writeMaxKiB - writeMinKiB) / 4 + 1));
        const data = randomBytes(blocks * 4096);
        const offset = randomOffset(c.size, data.length);
        await c.pwrite(data, offset);
        const back = await c.pread(data.length, offset);
        if (!back.equals(data)) mismatches++;
        bytesWritten += data.length;
      } else {
        const offset = randomOffset(c.size, 4096);
        const data = await c.pread(4096, offset);
        if (baseFd !== null && !data.equals(baseBytes(baseFd, offset, 4096))) mismatches++;
      }
      conns.push(c);
    } catch (err) {
      errors++;
      firstError ??= errorText(err);
      c?.destroy();
    }
  });
  return { conns, errors, mismatches, bytesWritten, firstError, openSeconds: (performance.now() - t0) / 1000 };
}
