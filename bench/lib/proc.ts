// Process helpers: start, watch and stop server processes by PID, and read /proc.

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { appendFileSync, readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';

const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Fields of /proc/PID/stat after the command name (index 0 = state), or null. */
function statFields(pid: number): string[] | null {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return s.slice(s.lastIndexOf(')') + 2).split(' ');
  } catch {
    return null;
  }
}

/** True while the process exists and is not a zombie. */
export function alive(pid: number): boolean {
  const f = statFields(pid);
  return f !== null && f[0] !== 'Z' && f[0] !== 'X';
}

/** Start time of a process in clock ticks since boot (identifies it across PID reuse). */
export function startTime(pid: number): string | null {
  const f = statFields(pid);
  return f === null ? null : (f[19] ?? null);
}

/** utime + stime of the process and its reaped children, in seconds, or null. */
export function cpuSeconds(pid: number): number | null {
  const f = statFields(pid);
  if (f === null) return null;
  // stat fields 14..17 (1-based) are utime, stime, cutime, cstime; here index = field - 3.
  return (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) / CLK_TCK;
}

/** The process and every live descendant (a server's workers, nbd-server's children), parents first. */
export function processTree(pid: number): number[] {
  const out = [pid];
  for (let i = 0; i < out.length && out.length < 4096; i++) out.push(...childPids(out[i] as number));
  return out;
}

/**
 * cpuSeconds summed over the process tree: live workers count too (a reaped child is in its
 * parent's cutime already), or null when `pid` is gone.
 */
export function treeCpuSeconds(pid: number): number | null {
  return sumOverTree(pid, cpuSeconds);
}

/** statusKiB summed over the process tree (VmRSS of a server and its workers), or null when `pid` is gone. */
export function treeStatusKiB(pid: number, field: string): number | null {
  return sumOverTree(pid, (p) => statusKiB(p, field));
}

/** `read` of `pid` plus that of each live descendant (one gone meanwhile counts 0); null when `pid` is gone. */
function sumOverTree(pid: number, read: (pid: number) => number | null): number | null {
  const own = read(pid);
  if (own === null) return null;
  return processTree(pid)
    .slice(1)
    .reduce((sum, p) => sum + (read(p) ?? 0), own);
}

/** A field of /proc/PID/status in KiB (VmRSS, VmHWM, ...), or null. */
export function statusKiB(pid: number, field: string): number | null {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

/** The last 3 lines of a log file on one line (at most 300 characters), for failure notes. */
export function tail(file: string): string {
  const r = spawnSync('tail', ['-n', '3', file], { encoding: 'utf8' });
  return (r.stdout ?? '').replace(/\s+/g, ' ').trim().slice(0, 300);
}

export function childPids(pid: number): number[] {
  const out: number[] = [];
  try {
    for (const tid of readdirSync(`/proc/${pid}/task`)) {
      const c = readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').trim();
      if (c) out.push(...c.split(/\s+/).map(Number));
    }
  } catch {
    // gone
  }
  return out;
}

/** Open descriptors of the process and its live descendants (a server's workers), or null when it is gone. */
export function openFdCount(pid: number): number | null {
  let count: number | null = null;
  for (const p of processTree(pid)) {
    try {
      count = (count ?? 0) + readdirSync(`/proc/${p}/fd`).length;
    } catch {
      // gone meanwhile
    }
  }
  return count;
}

export interface OpenFiles {
  readonly files: number;
  readonly bytes: number;
}

/**
 * Bytes allocated on disk by regular files the process holds open under `dir`, counting
 * files that were already unlinked (which du cannot see).
 */
export function openFilesAllocated(pid: number, dir: string): OpenFiles | null {
  let bytes = 0;
  let files = 0;
  const fds: string[] = [];
  try {
    for (const p of processTree(pid)) fds.push(...readdirSync(`/proc/${p}/fd`).map((fd) => `/proc/${p}/fd/${fd}`));
  } catch {
    if (fds.length === 0) return null;
  }
  for (const p of fds) {
    try {
      if (!readlinkSync(p).startsWith(`${dir}/`)) continue;
      const st = statSync(p);
      if (!st.isFile()) continue;
      files++;
      bytes += st.blocks * 512;
    } catch {
      // closed meanwhile
    }
  }
  return { files, bytes };
}

export interface DiskUsage {
  readonly allocated_bytes: number | null;
  readonly apparent_bytes: number | null;
  readonly du_allocated_bytes_raw: number | null;
  readonly files: number | null;
}

/** `du -s` of a directory: allocated and apparent bytes, and the number of files in it. */
export function diskUsage(dir: string): DiskUsage {
  const alloc = spawnSync('du', ['-s', '-B1', dir], { encoding: 'utf8' });
  const apparent = spawnSync('du', ['-s', '-B1', '--apparent-size', dir], { encoding: 'utf8' });
  let files: number | null = 0;
  let counted = 0;
  const walk = (d: string): void => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(d, e.name));
      else counted++;
    }
  };
  try {
    walk(dir);
    files = counted;
  } catch {
    files = null;
  }
  // du counts the directory itself (one block); subtract it so an empty dir reads 0.
  let self = { blocks: 0, size: 0 };
  try {
    self = statSync(dir);
  } catch {
    // gone: du failed too
  }
  const num = (r: { status: number | null; stdout: string }): number | null =>
    r.status === 0 ? Number(r.stdout.split(/\s/)[0]) : null;
  const a = num(alloc);
  const ap = num(apparent);
  return {
    allocated_bytes: a === null ? null : Math.max(0, a - self.blocks * 512),
    apparent_bytes: ap === null ? null : Math.max(0, ap - self.size),
    du_allocated_bytes_raw: a,
    files,
  };
}

/**
 * Remember a started process in the wrapper's registry ("pid starttime" per line), so the
 * shell wrapper can stop it by PID even if this Node process is killed.
 */
export function registerPid(pid: number): void {
  const file = process.env['BENCH_PID_REGISTRY'];
  if (!file || !pid) return;
  const st = startTime(pid);
  if (st !== null) appendFileSync(file, `${pid} ${st}\n`);
}

export interface StopOptions {
  readonly graceMs?: number;
  readonly child?: ChildProcess | null;
  readonly log?: (msg: string) => void;
}

/**
 * Stop a process by PID: SIGTERM, wait up to `graceMs`, then SIGKILL; only while it is still
 * the process that started at `startedAt` (its startTime() when it was started), so a
 * recycled PID is never signalled. Resolves once it is gone (or a zombie of ours).
 */
export async function stopPid(pid: number, startedAt: string | null, options: StopOptions = {}): Promise<void> {
  const { graceMs = 5000, child = null, log = () => undefined } = options;
  const running = (): boolean => alive(pid) && startTime(pid) === startedAt;
  if (!pid || startedAt === null || !running()) return;
  const exited = child
    ? new Promise<void>((r) => {
        if (child.exitCode !== null || child.signalCode !== null) r();
        else child.once('exit', () => r());
      })
    : null;
  try {
    process.kill(pid, 'SIGTERM');
  } catch {
    return;
  }
  const deadline = Date.now() + graceMs;
  while (running() && Date.now() < deadline) await sleep(50);
  if (running()) {
    log(`pid ${pid} ignored SIGTERM for ${graceMs} ms; sending SIGKILL`);
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone
    }
  }
  if (exited) await Promise.race([exited, sleep(2000)]);
}

export interface SpawnLoggedOptions {
  readonly env?: NodeJS.ProcessEnv;
  readonly logFd: number;
  /** 'pipe': stdout readable by the caller; 'log' (default): stdout to the log too. */
  readonly stdout?: 'log' | 'pipe';
}

/** spawn() with stdout/stderr to a log file descriptor, and the PID registered. */
export function spawnLogged(cmd: string, args: readonly string[], options: SpawnLoggedOptions): ChildProcess {
  const { env, logFd, stdout = 'log' } = options;
  const child = spawn(cmd, args, {
    env: env ?? process.env,
    stdio: ['ignore', stdout === 'pipe' ? 'pipe' : logFd, logFd],
  });
  if (child.pid) registerPid(child.pid);
  return child;
}

/**
 * A bench's way out: SIGINT, SIGTERM and SIGHUP exit 130, an uncaught error or rejection exits 3,
 * each through `cleanupAndExit` (which stops what the bench started), once: nothing more is said
 * while `stopping()`. Returns the handler for internal errors, for the bench's own main().catch.
 */
export function exitOnSignalsAndErrors(
  stopping: () => boolean,
  cleanupAndExit: (code: number) => Promise<unknown>,
  log: (message: string) => void,
): (err: unknown) => void {
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.on(sig, () => {
      if (stopping()) return;
      log(`${sig}: stopping`);
      void cleanupAndExit(130);
    });
  }
  const internalError = (err: unknown): void => {
    if (stopping()) return;
    log(`internal error: ${err instanceof Error ? (err.stack ?? err) : err}`);
    void cleanupAndExit(3);
  };
  process.on('uncaughtException', internalError);
  process.on('unhandledRejection', internalError);
  return internalError;
}
