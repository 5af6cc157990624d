// The scale run (nbd-cow only): many connections to one server, opened in parallel and kept
// open, while the server's memory, open fds and overlay disk use are sampled (bench/README.md,
// "Scale").

import { NbdSession } from '../../test/helpers/raw-nbd/session.js';
import { log } from './log.js';
import { alive, diskUsage, openFdCount, openFilesAllocated, sleep, tail, treeCpuSeconds, treeStatusKiB } from './proc.js';
import { OURS } from './report.js';
import type { ScaleMeasured, ScalePhase } from './results.js';
import type { RunningServer, StartFailure } from './servers.js';
import { type Settings, scaleWriteRange } from './settings.js';
import { baseBytes, errorText, openMany, pool, round } from './workloads.js';

/** What a phase needs from the driver: the settings, the base, and starting and stopping nbd-cow. */
export interface ScaleContext {
  readonly settings: Settings;
  readonly exportName: string;
  /** The base, to check what the readers read; null: not checked. */
  readonly baseFd: number | null;
  /** The report's "Failures and notes", appended to. */
  readonly messages: string[];
  /** Start a fresh nbd-cow (logging the phase first). */
  start(): Promise<RunningServer | StartFailure>;
  /** Stop it and remove its run dir. */
  finish(srv: RunningServer): Promise<void>;
}

/** The server's VmRSS and open fds, sampled every 100 ms while the phase runs: the maxima. */
class PeakSampler {
  rssMax: number;
  fdMax = 0;
  readonly #pid: number;
  readonly #timer: NodeJS.Timeout;

  constructor(pid: number, rssBefore: number | null) {
    this.#pid = pid;
    this.rssMax = rssBefore ?? 0;
    this.#timer = setInterval(() => this.sample(), 100);
  }

  sample(): void {
    const r = treeStatusKiB(this.#pid, 'VmRSS');
    if (r !== null && r > this.rssMax) this.rssMax = r;
    const f = openFdCount(this.#pid);
    if (f !== null && f > this.fdMax) this.fdMax = f;
  }

  stop(): void {
    clearInterval(this.#timer);
  }
}

/** One throwaway session while everything else sits idle: is the server still responsive? */
async function probeSession(srv: RunningServer, mode: string, ctx: ScaleContext): Promise<number | null> {
  const { baseFd, messages } = ctx;
  try {
    const t = performance.now();
    const c = await NbdSession.open(srv.endpoint.target, ctx.exportName);
    const d = await c.pread(4096, 0);
    await c.disconnect();
    const ms = performance.now() - t;
    if (baseFd !== null && !d.equals(baseBytes(baseFd, 0, 4096))) messages.push(`scale ${mode}: probe session read wrong data`);
    return ms;
  } catch (err) {
    messages.push(`scale ${mode}: probe session failed: ${errorText(err)}`);
    return null;
  }
}

/**
 * One phase of the scale run: `settings.scale_connections` connections to one fresh nbd-cow
 * (ctx.start), each writing or reading once and then idle; the server's memory, fds and
 * overlay disk use while they are open and after they closed.
 */
export async function runScalePhase(mode: 'write' | 'read', ctx: ScaleContext): Promise<ScalePhase> {
  const { settings, baseFd, messages } = ctx;
  const srv = await ctx.start();
  if ('error' in srv) return { status: 'fail', note: `server did not start: ${srv.error}` };
  const [writeMinKiB, writeMaxKiB] = scaleWriteRange(settings);
  const rssBefore = treeStatusKiB(srv.pid, 'VmRSS');
  const cpu0 = treeCpuSeconds(srv.pid);
  const peaks = new PeakSampler(srv.pid, rssBefore);
  const opened = await openMany({
    target: srv.endpoint.target,
    exportName: ctx.exportName,
    n: settings.scale_connections,
    concurrency: settings.scale_concurrency,
    mode,
    writeMinKiB,
    writeMaxKiB,
    baseFd,
  });
  log(
    `${OURS}: scale ${mode}: ${opened.conns.length} open in ${opened.openSeconds.toFixed(1)} s, ${opened.errors} errors; idle ${settings.scale_idle_seconds} s`,
  );
  await sleep(settings.scale_idle_seconds * 1000);
  peaks.sample();
  const overlay = diskUsage(srv.overlayDir);
  const openFd = openFilesAllocated(srv.pid, srv.overlayDir);
  const rssIdle = treeStatusKiB(srv.pid, 'VmRSS');
  const probeMs = await probeSession(srv, mode, ctx);
  const alive1 = alive(srv.pid);
  await pool(opened.conns.length, 64, async (i) => {
    const c = opened.conns[i];
    try {
      await c?.disconnect();
    } catch {
      c?.destroy();
    }
  });
  await sleep(500);
  peaks.sample();
  peaks.stop();
  const afterClose = diskUsage(srv.overlayDir);
  const rssAfterClose = treeStatusKiB(srv.pid, 'VmRSS');
  const cpu1 = treeCpuSeconds(srv.pid);
  const hwm = treeStatusKiB(srv.pid, 'VmHWM');
  const open = opened.conns.length;
  const r: ScaleMeasured = {
    status: alive1 && open > 0 ? 'ok' : 'fail',
    mode,
    open,
    errors: opened.errors,
    first_error: opened.firstError,
    mismatches: opened.mismatches,
    open_seconds: round(opened.openSeconds, 2),
    bytes_written: opened.bytesWritten,
    rss_before_kib: rssBefore,
    rss_max_kib: peaks.rssMax,
    rss_idle_kib: rssIdle,
    rss_after_close_kib: rssAfterClose,
    vm_hwm_kib: hwm,
    rss_per_connection_bytes: open > 0 && rssBefore !== null ? Math.round(((peaks.rssMax - rssBefore) * 1024) / open) : null,
    max_open_fds: peaks.fdMax,
    overlay,
    open_fd_overlay: openFd,
    overlay_after_close: afterClose,
    probe_session_ms: probeMs === null ? null : round(probeMs, 2),
    server_cpu_s: cpu0 !== null && cpu1 !== null ? round(cpu1 - cpu0, 2) : null,
  };
  if (!alive1) r.note = `server died; ${tail(srv.logFile)}`;
  else if (open === 0) r.note = `no connection opened: ${opened.firstError}`;
  if (opened.errors > 0) messages.push(`scale ${mode}: ${opened.errors} connections failed, first: ${opened.firstError}`);
  if (opened.mismatches > 0) messages.push(`scale ${mode}: ${opened.mismatches} connections read back wrong data`);
  if (mode === 'read' && overlay.allocated_bytes !== 0)
    messages.push(`scale read: overlay dir uses ${overlay.allocated_bytes} bytes with read-only sessions (expected 0)`);
  if (afterClose.allocated_bytes !== 0 || afterClose.files !== 0) {
    messages.push(
      `scale ${mode}: after every connection closed the overlay dir still holds ${afterClose.files} files, ${afterClose.allocated_bytes} bytes`,
    );
  }
  await ctx.finish(srv);
  return r;
}
