// Process helpers: start, watch and stop server processes by PID, and read /proc.

import { spawn, spawnSync } from 'node:child_process';
import { appendFileSync, readdirSync, readFileSync, readlinkSync, statSync } from 'node:fs';
import { join } from 'node:path';

const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Fields of /proc/PID/stat after the command name (index 0 = state), or null. */
function statFields(pid) {
  try {
    const s = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return s.slice(s.lastIndexOf(')') + 2).split(' ');
  } catch {
    return null;
  }
}

/** True while the process exists and is not a zombie. */
export function alive(pid) {
  const f = statFields(pid);
  return f !== null && f[0] !== 'Z' && f[0] !== 'X';
}

/** Start time of a process in clock ticks since boot (identifies it across PID reuse). */
export function startTime(pid) {
  const f = statFields(pid);
  return f === null ? null : f[19];
}

/** utime + stime of the process and its reaped children, in seconds, or null. */
export function cpuSeconds(pid) {
  const f = statFields(pid);
  if (f === null) return null;
  // stat fields 14..17 (1-based) are utime, stime, cutime, cstime; here index = field - 3.
  return (Number(f[11]) + Number(f[12]) + Number(f[13]) + Number(f[14])) / CLK_TCK;
}

/** A field of /proc/PID/status in KiB (VmRSS, VmHWM, ...), or null. */
export function statusKiB(pid, field) {
  try {
    const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}

export function childPids(pid) {
  const out = [];
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

export function openFdCount(pid) {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return null;
  }
}

/**
 * Bytes allocated on disk by regular files the process holds open under `dir`, counting
 * files that were already unlinked (which du cannot see).
 */
export function openFilesAllocated(pid, dir) {
  let bytes = 0;
  let files = 0;
  let fds;
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return null;
  }
  for (const fd of fds) {
    const p = `/proc/${pid}/fd/${fd}`;
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

/** `du -s` of a directory: allocated and apparent bytes, and the number of files in it. */
export function diskUsage(dir) {
  const alloc = spawnSync('du', ['-s', '-B1', dir], { encoding: 'utf8' });
  const apparent = spawnSync('du', ['-s', '-B1', '--apparent-size', dir], { encoding: 'utf8' });
  let files = 0;
  const walk = (d) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      if (e.isDirectory()) walk(join(d, e.name));
      else files++;
    }
  };
  try {
    walk(dir);
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
  const num = (r) => (r.status === 0 ? Number(r.stdout.split(/\s/)[0]) : null);
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
export function registerPid(pid) {
  const file = process.env.BENCH_PID_REGISTRY;
  if (!file || !pid) return;
  const st = startTime(pid);
  if (st !== null) appendFileSync(file, `${pid} ${st}\n`);
}

/**
 * Stop a process by PID: SIGTERM, wait up to `graceMs`, then SIGKILL; only while it is still
 * the process that started at `startedAt` (its startTime() when it was started), so a
 * recycled PID is never signalled. Resolves once it is gone (or a zombie of ours).
 */
export async function stopPid(pid, startedAt, { graceMs = 5000, child = null, log = () => {} } = {}) {
  const running = () => alive(pid) && startTime(pid) === startedAt;
  if (!pid || startedAt === null || !running()) return;
  const exited = child
    ? new Promise((r) => (child.exitCode !== null || child.signalCode !== null ? r() : child.once('exit', r)))
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

/** spawn() with stdout/stderr to a log file descriptor, and the PID registered. */
export function spawnLogged(cmd, args, { env, logFd, stdout = 'log' } = {}) {
  const child = spawn(cmd, args, {
    env: env ?? process.env,
    stdio: ['ignore', stdout === 'pipe' ? 'pipe' : logFd, logFd],
  });
  if (child.pid) registerPid(child.pid);
  return child;
}
