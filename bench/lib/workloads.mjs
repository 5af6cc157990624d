// The workloads: fio with its nbd engine, throwaway sessions and the scale run's clients.

import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync, readSync } from 'node:fs';
import { NbdConnection } from './nbd-client.mjs';

export const FIO_WORKLOADS = {
  'seq-read': { rw: 'read', bs: '1M', iodepth: 8, timed: true },
  // One pass over the whole export into an empty overlay, capped at RUNTIME, no ramp:
  // every write is a first write.
  'seq-write': { rw: 'write', bs: '1M', iodepth: 8, timed: false },
  'rand-read': { rw: 'randread', bs: '4k', iodepth: 32, timed: true },
  'rand-write': { rw: 'randwrite', bs: '4k', iodepth: 32, timed: true },
  'rand-read-qd1': { rw: 'randread', bs: '4k', iodepth: 1, timed: true },
};

export const round = (x, d = 1) => (x === null || x === undefined || Number.isNaN(x) ? null : Math.round(x * 10 ** d) / 10 ** d);

/** Run one fio job against `uri`; resolves with parsed numbers or throws with fio's output. */
export function runFio(workload, uri, { runtime, ramp, outFile, logFd, clients = new Set() }) {
  const w = FIO_WORKLOADS[workload];
  const args = [
    `--name=${workload}`,
    '--ioengine=nbd',
    `--uri=${uri}`,
    '--numjobs=1',
    `--rw=${w.rw}`,
    `--bs=${w.bs}`,
    `--iodepth=${w.iodepth}`,
    `--runtime=${runtime}`,
    '--lat_percentiles=1',
    '--percentile_list=50:99:99.9',
    '--output-format=json',
    `--output=${outFile}`,
  ];
  if (w.timed) args.push('--time_based', `--ramp_time=${ramp}`);
  return new Promise((resolve, reject) => {
    const child = spawn('fio', args, { stdio: ['ignore', logFd, logFd] });
    clients.add(child);
    const limit = (runtime + ramp + 60) * 1000;
    const timer = setTimeout(() => child.kill('SIGKILL'), limit);
    child.once('error', (e) => {
      clearTimeout(timer);
      reject(e);
    });
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      clients.delete(child);
      let data;
      try {
        data = JSON.parse(readFileSync(outFile, 'utf8'));
      } catch {
        reject(new Error(`fio exited with ${code ?? signal} and wrote no JSON`));
        return;
      }
      const job = data.jobs?.[0];
      if (!job) return reject(new Error('fio JSON has no job'));
      const side = w.rw.includes('write') ? job.write : job.read;
      const lat = side.lat_ns ?? {};
      const pct = lat.percentile ?? {};
      const us = (ns) => (ns === undefined ? null : round(ns / 1000));
      const result = {
        MiB_per_s: round(side.bw_bytes / 1048576),
        iops: Math.round(side.iops),
        lat_mean_us: us(lat.mean),
        lat_p50_us: us(pct['50.000000']),
        lat_p99_us: us(pct['99.000000']),
        lat_p999_us: us(pct['99.900000']),
        lat_max_us: us(lat.max),
        io_bytes: side.io_bytes,
        measured_s: round(side.runtime / 1000, 2),
        fio_error: job.error ?? 0,
        fio_args: args.filter((a) => !a.startsWith('--uri=') && !a.startsWith('--output=')).join(' '),
      };
      if (code !== 0 || result.fio_error !== 0) {
        const e = new Error(`fio exited with ${code ?? signal}, job error ${result.fio_error}`);
        e.partial = result;
        return reject(e);
      }
      resolve(result);
    });
  });
}

function percentile(sorted, pct) {
  if (sorted.length === 0) return null;
  const rank = Math.max(1, Math.round((pct / 100) * sorted.length));
  return sorted[Math.min(rank, sorted.length) - 1];
}

/** Reads `length` bytes of the base at `offset` (for checking what the server returned). */
export function baseBytes(baseFd, offset, length) {
  const buf = Buffer.alloc(length);
  let done = 0;
  while (done < length) {
    const n = readSync(baseFd, buf, done, length - done, offset + done);
    if (n === 0) break;
    done += n;
  }
  return buf;
}

const randomOffset = (size, length, align = 4096) => Math.floor(Math.random() * Math.floor((size - length) / align + 1)) * align;

/**
 * Throwaway sessions for `seconds`: connect, handshake, read 4 KiB at a random aligned
 * offset, NBD_CMD_DISC, wait for the close; one at a time. With `baseFd`, every read is
 * compared with the base.
 */
export async function runSessions({ target, exportName, seconds, baseFd, expectSize, bytes = 4096 }) {
  const lat = [];
  let errors = 0;
  let mismatches = 0;
  let consecutive = 0;
  let lastError = null;
  const start = performance.now();
  const deadline = start + seconds * 1000;
  while (performance.now() < deadline) {
    const t0 = performance.now();
    let data;
    let offset;
    try {
      const c = await NbdConnection.open(target, exportName);
      if (c.size !== expectSize) {
        c.destroy();
        throw new Error(`export size ${c.size}, expected ${expectSize}`);
      }
      offset = randomOffset(c.size, bytes);
      data = await c.pread(bytes, offset);
      await c.disconnect();
    } catch (err) {
      errors++;
      lastError = String(err.message ?? err);
      if (++consecutive >= 50) break;
      continue;
    }
    consecutive = 0;
    lat.push((performance.now() - t0) * 1000);
    if (baseFd !== null && !data.equals(baseBytes(baseFd, offset, bytes))) mismatches++;
  }
  const elapsed = (performance.now() - start) / 1000;
  lat.sort((a, b) => a - b);
  return {
    sessions: lat.length,
    measured_s: round(elapsed, 3),
    sessions_per_s: elapsed > 0 ? round(lat.length / elapsed) : 0,
    lat_mean_us: lat.length ? round(lat.reduce((a, b) => a + b, 0) / lat.length) : null,
    lat_p50_us: round(percentile(lat, 50)),
    lat_p99_us: round(percentile(lat, 99)),
    errors,
    mismatches,
    verified: baseFd !== null,
    last_error: lastError,
  };
}

/** Run `fn(i)` for i in [0, n) with at most `limit` in flight. */
export async function pool(n, limit, fn) {
  let next = 0;
  const worker = async () => {
    while (next < n) {
      const i = next++;
      await fn(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, n) }, worker));
}

/**
 * Open `n` connections and keep them. mode 'write': each writes a random-sized
 * (writeMin..writeMax KiB, 4 KiB multiples) block of random bytes at a random aligned
 * offset and reads it back; mode 'read': each reads 4 KiB at a random offset and checks it
 * against the base. Returns the open connections and counts.
 */
export async function openMany({ target, exportName, n, concurrency, mode, writeMinKiB, writeMaxKiB, baseFd }) {
  const conns = [];
  let errors = 0;
  let mismatches = 0;
  let bytesWritten = 0;
  let firstError = null;
  const t0 = performance.now();
  await pool(n, concurrency, async () => {
    let c = null;
    try {
      c = await NbdConnection.open(target, exportName, { timeoutMs: 30000 });
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
      firstError ??= String(err.message ?? err);
      c?.destroy();
    }
  });
  return { conns, errors, mismatches, bytesWritten, firstError, openSeconds: (performance.now() - t0) / 1000 };
}
