#!/usr/bin/env node
// nbd-cow benchmark driver. Run through bench/run.sh (which raises the fd limit and stops
// leftover servers by PID); settings come from the environment, see bench/README.md.
// Markdown goes to stdout (and results/latest.md next to the JSON), progress to stderr.
// Exit status: 0, or 1 if a server failed to start, or 2 if the base image changed (3: internal
// error, 130: signal).

import { spawnSync } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { NbdConnection } from './lib/nbd-client.mjs';
import {
  alive,
  childPids,
  cpuSeconds,
  diskUsage,
  openFdCount,
  openFilesAllocated,
  sleep,
  startTime,
  statusKiB,
  stopPid,
} from './lib/proc.mjs';
import { computeRatios, MEMORY, OURS, renderMarkdown } from './lib/report.mjs';
import { SERVERS } from './lib/servers.mjs';
import { baseBytes, FIO_WORKLOADS, openMany, pool, round, runFio, runSessions } from './lib/workloads.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const ROOT = resolve(HERE, '..');
const T0 = performance.now();

// ------------------------------------------------------------------ settings

const env = process.env;
const QUICK = env.BENCH_QUICK === '1';

function intSetting(name, def) {
  const v = env[name];
  if (v === undefined || v === '') return def;
  if (!/^\d+$/.test(v)) die(`${name} must be a whole number, got '${v}'`);
  return Number(v);
}

function log(msg) {
  const t = new Date().toISOString().slice(11, 19);
  process.stderr.write(`[bench ${t}] ${msg}\n`);
}

function die(msg, code = 1) {
  log(`error: ${msg}`);
  process.exit(code);
}

const DEFAULT_ANCHORS = ['nbd-server', 'qemu-nbd', 'nbdkit-cow', 'nbdkit-memory'];
const DEFAULT_WORKLOADS = [
  'seq-read',
  'seq-write',
  'rand-read',
  'rand-write',
  'rand-read-qd1',
  'sessions',
  'sessions@unix',
  'scale',
];

const settings = {
  quick: QUICK,
  base_mb: intSetting('BASE_MB', QUICK ? 256 : 1024),
  runtime: intSetting('RUNTIME', QUICK ? 3 : 10),
  ramp: intSetting('RAMP', QUICK ? 1 : 2),
  session_seconds: intSetting('SESSION_SECONDS', QUICK ? 2 : 5),
  scale_connections: intSetting('SCALE_CONNECTIONS', 1000),
  scale_idle_seconds: intSetting('SCALE_IDLE', QUICK ? 2 : 5),
  scale_concurrency: intSetting('SCALE_CONCURRENCY', 32),
  scale_write_kib: (env.SCALE_WRITE_KIB ?? '4-64').split('-').map(Number),
  anchors: (env.SERVERS ?? DEFAULT_ANCHORS.join(' ')).split(/\s+/).filter(Boolean),
  workloads: (env.WORKLOADS ?? DEFAULT_WORKLOADS.join(' ')).split(/\s+/).filter(Boolean),
  transport: 'tcp',
  ours_args: (env.OURS_ARGS ?? '').split(/\s+/).filter(Boolean),
  // Extra nbd-cow rows, one per flag set ("--block-size 16K; --block-size 64K"): compared with
  // the anchors in the same run, never counted as an anchor.
  ours_variants: (env.OURS_VARIANTS ?? '')
    .split(';')
    .map((v) => v.trim().split(/\s+/).filter(Boolean))
    .filter((v) => v.length > 0),
  ready_timeout_s: intSetting('READY_TIMEOUT', 20),
  results: resolve(env.RESULTS ?? join(HERE, 'results', 'latest.json')),
  keep_tmp: env.KEEP_TMP === '1',
  prime_memory: env.PRIME_MEMORY !== '0',
  warm_base: env.WARM_BASE !== '0',
};

{
  const [lo, hi] = settings.scale_write_kib;
  if (!(lo >= 4 && hi >= lo && lo % 4 === 0 && hi % 4 === 0))
    die(`SCALE_WRITE_KIB must be MIN-MAX in KiB, multiples of 4, got '${env.SCALE_WRITE_KIB}'`);
  if (settings.base_mb < 1) die('BASE_MB must be at least 1');
  for (const a of settings.anchors) {
    if (a === OURS) continue; // nbd-cow always runs; naming it is harmless
    if (!SERVERS[a])
      die(
        `unknown server '${a}' in SERVERS (known: ${Object.keys(SERVERS)
          .filter((n) => n !== OURS)
          .join(', ')})`,
      );
  }
  const seen = new Set();
  for (const w of settings.workloads) {
    const [base, transport] = w.split('@');
    if (!FIO_WORKLOADS[base] && base !== 'sessions' && base !== 'scale') die(`unknown workload '${w}'`);
    if (transport !== undefined && transport !== 'tcp' && transport !== 'unix') die(`unknown transport in '${w}' (tcp or unix)`);
    if (seen.has(w)) die(`workload '${w}' named twice`);
    seen.add(w);
  }
}
const variantNames = settings.ours_variants.map((args) => {
  const name = `${OURS} ${args.join(' ')}`;
  SERVERS[name] = {
    ...SERVERS[OURS],
    cow: false,
    variant: true,
    oursArgs: args,
    notes: `nbd-cow with ${args.join(' ')} (a variant, not an anchor)`,
  };
  return name;
});
const serverNames = [...new Set([OURS, ...variantNames, ...settings.anchors])];
const runWorkloads = settings.workloads.filter((w) => !w.startsWith('scale'));
const scaleWorkload = settings.workloads.find((w) => w.startsWith('scale'));

// ------------------------------------------------------------------ temp dir, cleanup

const WORK = mkdtempSync(join(os.tmpdir(), 'nbd-cow-bench-'));
const BASE = join(WORK, 'base.raw');
const BASE_SIZE = settings.base_mb * 1024 * 1024;
const live = new Map(); // pid -> { child, startedAt }: servers running now
const clients = new Set(); // fio child processes running now
let stopping = false; // set once by a signal or an internal error: start nothing new
let startsInFlight = 0; // def.start() calls that have not returned a PID yet

async function stopServer(srv) {
  const v = live.get(srv.pid);
  if (!v) return; // never started, or already known to be gone
  await stopPid(srv.pid, v.startedAt, { child: v.child, log });
  live.delete(srv.pid);
}

async function cleanupAndExit(code) {
  stopping = true;
  for (const c of clients) c.kill('SIGTERM');
  // A start in progress may still add a server; wait for it (bounded), then stop them all.
  for (let i = 0; i < 200 && startsInFlight > 0; i++) await sleep(50);
  for (const [pid, v] of [...live]) {
    log(`stopping server pid ${pid}`);
    await stopPid(pid, v.startedAt, { child: v.child, log, graceMs: 2000 });
    live.delete(pid);
  }
  if (settings.keep_tmp) log(`kept temp dir ${WORK}`);
  else rmSync(WORK, { recursive: true, force: true });
  process.exit(code);
}

for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    if (stopping) return;
    log(`${sig}: stopping servers`);
    cleanupAndExit(130);
  });
}
process.on('uncaughtException', (err) => {
  if (stopping) return;
  log(`internal error: ${err.stack ?? err}`);
  cleanupAndExit(3);
});
process.on('unhandledRejection', (err) => {
  if (stopping) return;
  log(`internal error: ${err?.stack ?? err}`);
  cleanupAndExit(3);
});

// ------------------------------------------------------------------ base image

function sha256(path) {
  const r = spawnSync('sha256sum', [path], { encoding: 'utf8' });
  if (r.status !== 0) die('sha256sum failed');
  return r.stdout.split(' ')[0];
}

function makeBase() {
  const haveOpenssl = spawnSync('sh', ['-c', 'command -v openssl'], { encoding: 'utf8' }).status === 0;
  // AES-CTR keystream of /dev/zero: incompressible and fast. /dev/urandom otherwise.
  const method = haveOpenssl ? 'openssl enc -aes-128-ctr of /dev/zero' : 'head -c of /dev/urandom';
  const gen = haveOpenssl
    ? `openssl enc -aes-128-ctr -pass pass:nbd-cow-bench-$$ -nosalt -pbkdf2 -in /dev/zero 2>/dev/null | head -c ${BASE_SIZE} > "$1"`
    : `head -c ${BASE_SIZE} /dev/urandom > "$1"`;
  const r = spawnSync('sh', ['-c', gen, 'sh', BASE], { stdio: ['ignore', 'ignore', 'inherit'] });
  let size = -1;
  try {
    size = statSync(BASE).size;
  } catch {
    // not created
  }
  if (size !== BASE_SIZE) die(`base image has ${size} bytes, expected ${BASE_SIZE} (exit ${r.status})`);
  return method;
}

// ------------------------------------------------------------------ one server start

const results = {
  schema: 1,
  generated: `${new Date().toISOString().slice(0, 16)}Z`,
  settings: { ...settings, results: undefined },
  host: {
    cpus: os.cpus().length,
    mem_gib: Math.round(os.totalmem() / 2 ** 30),
    kernel: os.release(),
    loadavg_start: os
      .loadavg()
      .map((x) => x.toFixed(2))
      .join(' '),
  },
  versions: {},
  base: {},
  servers: [],
  scale: null,
  ratios: {},
  messages: [],
};

let startFailures = 0;
let runCounter = 0;

/** Start `name` with a fresh run dir; wait until a handshake reports the base's size. */
async function startServer(name, transport) {
  if (stopping) await new Promise(() => {}); // shutting down: never return
  const def = SERVERS[name];
  const run = join(WORK, 'run', `${++runCounter}-${name.replace(/[^\w@.-]+/g, '_')}-${transport}`);
  mkdirSync(run, { recursive: true });
  const logFile = join(run, 'server.log');
  const logFd = openSync(logFile, 'a');
  const ctx = {
    base: BASE,
    baseMB: settings.base_mb,
    run,
    transport,
    logFd,
    oursArgs: def.oursArgs ?? settings.ours_args,
    root: ROOT,
  };
  let srv;
  startsInFlight++;
  try {
    srv = await def.start(ctx);
    live.set(srv.pid, { child: srv.child, startedAt: startTime(srv.pid) });
  } catch (err) {
    return { error: `start failed: ${err.message}; ${tail(logFile)}`, run };
  } finally {
    startsInFlight--;
    closeSync(logFd);
  }
  srv.run = run;
  srv.logFile = logFile;
  if (stopping) await new Promise(() => {}); // cleanupAndExit stops it

  const deadline = Date.now() + settings.ready_timeout_s * 1000;
  if (srv.stdoutReady) {
    const line = await Promise.race([srv.stdoutReady, sleep(settings.ready_timeout_s * 1000).then(() => null)]);
    if (line === null) {
      const exited = !alive(srv.pid);
      await stopServer(srv);
      return {
        error: `${exited ? 'exited during start-up' : `no URI line on stdout within ${settings.ready_timeout_s} s`}; ${tail(logFile)}`,
        run,
      };
    }
  }
  let lastErr = 'not accepting connections';
  while (Date.now() < deadline) {
    if (!alive(srv.pid)) {
      live.delete(srv.pid);
      return { error: `server exited during start-up; ${tail(logFile)}`, run };
    }
    try {
      const c = await NbdConnection.open(srv.endpoint.target, def.exportName, { timeoutMs: 3000 });
      const size = c.size;
      await c.disconnect();
      if (size !== BASE_SIZE) {
        await stopServer(srv);
        return { error: `export size ${size}, expected ${BASE_SIZE}`, run };
      }
      await waitChildren(srv.pid);
      return srv;
    } catch (err) {
      lastErr = err.message;
      await sleep(50);
    }
  }
  await stopServer(srv);
  return { error: `not ready after ${settings.ready_timeout_s} s: ${lastErr}; ${tail(logFile)}`, run };
}

function tail(file) {
  const r = spawnSync('tail', ['-n', '3', file], { encoding: 'utf8' });
  return (r.stdout ?? '').replace(/\s+/g, ' ').trim().slice(0, 300);
}

/** A forking server (nbd-server) adds a connection's CPU time only once it reaped the child. */
async function waitChildren(pid, ms = 5000) {
  const deadline = Date.now() + ms;
  while (childPids(pid).length > 0 && Date.now() < deadline) await sleep(50);
}

function removeRun(srv) {
  if (!settings.keep_tmp && srv?.run) rmSync(srv.run, { recursive: true, force: true });
}

// ------------------------------------------------------------------ workloads per server

/**
 * Before every workload: read the whole base once. Some VMs page out file cache that has not
 * been touched for a while (this one runs DAMON with a pageout scheme for pages idle about a
 * minute), so without this the first server after a run of write workloads meets a partly cold
 * base and warms it for the servers after it.
 */
function warmBase() {
  const r = spawnSync('cat', [BASE], { stdio: 'ignore' });
  if (r.status !== 0) log(`warming the base failed (exit ${r.status}); going on`);
}

/**
 * Before a write workload: write a scratch file as big as the base and delete it. On a VM whose
 * balloon hands free pages back to the host, the first touch of fresh memory is several times
 * slower than reusing pages freed a moment ago, so without this a server's first writes are
 * fast or slow depending on what ran before it (bench/README.md, "Reading the numbers").
 */
function primeMemory() {
  const scratch = join(WORK, 'prime.scratch');
  const r = spawnSync('sh', ['-c', `head -c ${BASE_SIZE} /dev/zero > "$1"`, 'sh', scratch], { stdio: 'ignore' });
  rmSync(scratch, { force: true });
  if (r.status !== 0) log(`priming memory failed (exit ${r.status}); going on`);
}

let baseFd = null;

async function benchWorkload(name, w) {
  const def = SERVERS[name];
  const [base, transport = settings.transport] = w.split('@');
  log(`${name}: ${w}`);
  const srv = await startServer(name, transport);
  if (srv.error) {
    startFailures++;
    log(`${name}: ${w}: server did not start: ${srv.error}`);
    return { entry: { status: 'fail', transport, note: `server did not start: ${srv.error}` } };
  }
  if (settings.warm_base) warmBase();
  if (settings.prime_memory && FIO_WORKLOADS[base]?.rw.includes('write')) primeMemory();
  const cpu0 = cpuSeconds(srv.pid);
  const t0 = performance.now();
  let entry;
  try {
    let r;
    if (base === 'sessions') {
      r = await runSessions({
        target: srv.endpoint.target,
        exportName: def.exportName,
        seconds: settings.session_seconds,
        baseFd: def.servesBase ? baseFd : null,
        expectSize: BASE_SIZE,
      });
      entry = { status: r.sessions > 0 && r.mismatches === 0 ? 'ok' : 'fail', transport, ...r };
      if (r.errors > 0) entry.note = `${r.errors} failed sessions, last: ${r.last_error}`;
      if (r.mismatches > 0) entry.note = `${entry.note ? `${entry.note}; ` : ''}${r.mismatches} reads differ from the base`;
    } else {
      const logFd = openSync(join(srv.run, 'fio.log'), 'a');
      try {
        r = await runFio(base, srv.endpoint.uri, {
          runtime: settings.runtime,
          ramp: settings.ramp,
          outFile: join(srv.run, 'fio.json'),
          logFd,
          clients,
        });
        entry = { status: 'ok', transport, ...r };
      } finally {
        closeSync(logFd);
      }
    }
  } catch (err) {
    entry = { status: 'fail', transport, ...(err.partial ?? {}), note: `${err.message}; ${tail(join(srv.run, 'fio.log'))}` };
  }
  const wall = (performance.now() - t0) / 1000;
  if (stopping) await new Promise(() => {}); // interrupted: cleanupAndExit finishes the job
  await waitChildren(srv.pid);
  const cpu1 = cpuSeconds(srv.pid);
  entry.server_peak_rss_kib = statusKiB(srv.pid, 'VmHWM');
  if (!alive(srv.pid)) {
    entry.status = 'fail';
    entry.note = `${entry.note ? `${entry.note}; ` : ''}server died during the workload; ${tail(srv.logFile)}`;
    live.delete(srv.pid);
  }
  if (cpu0 !== null && cpu1 !== null) {
    entry.server_cpu_s = round(cpu1 - cpu0, 2);
    entry.wall_s = round(wall, 2);
    entry.server_cpu_pct = Math.round(((cpu1 - cpu0) / wall) * 100);
  }
  if (entry.status !== 'ok') log(`${name}: ${w}: ${entry.status}: ${entry.note ?? ''}`);
  await stopServer(srv);
  removeRun(srv);
  return { entry, srv };
}

/** A server's command line for the report: temp paths as $TMP, the port as {port}. */
function showCommand(srv) {
  let c = srv.cmd.split(WORK).join('$TMP');
  if (srv.endpoint.port) c = c.split(String(srv.endpoint.port)).join('{port}');
  return c;
}

function versionOf(cmd, args) {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.error) return null;
  return `${r.stdout}${r.stderr}`.split('\n')[0].trim();
}

function checkBase(after) {
  const sum = sha256(BASE);
  if (sum !== results.base.sha256) {
    results.base.unchanged = false;
    results.base.sha256_after = sum;
    results.messages.push(`the base image's sha256 changed after ${after}; stopped`);
    return false;
  }
  return true;
}

// ------------------------------------------------------------------ scale run (nbd-cow only)

async function scalePhase(mode, transport) {
  const def = SERVERS[OURS];
  const n = settings.scale_connections;
  log(`${OURS}: scale ${mode}: ${n} connections`);
  const srv = await startServer(OURS, transport);
  if (srv.error) {
    startFailures++;
    return { status: 'fail', note: `server did not start: ${srv.error}` };
  }
  const rec = results.servers.find((s) => s.name === OURS);
  if (rec && rec.command === null) rec.command = showCommand(srv);
  const rssBefore = statusKiB(srv.pid, 'VmRSS');
  const cpu0 = cpuSeconds(srv.pid);
  let rssMax = rssBefore ?? 0;
  let fdMax = 0;
  const sample = () => {
    const r = statusKiB(srv.pid, 'VmRSS');
    if (r !== null && r > rssMax) rssMax = r;
    const f = openFdCount(srv.pid);
    if (f !== null && f > fdMax) fdMax = f;
  };
  const timer = setInterval(sample, 100);
  const opened = await openMany({
    target: srv.endpoint.target,
    exportName: def.exportName,
    n,
    concurrency: settings.scale_concurrency,
    mode,
    writeMinKiB: settings.scale_write_kib[0],
    writeMaxKiB: settings.scale_write_kib[1],
    baseFd,
  });
  log(
    `${OURS}: scale ${mode}: ${opened.conns.length} open in ${opened.openSeconds.toFixed(1)} s, ${opened.errors} errors; idle ${settings.scale_idle_seconds} s`,
  );
  await sleep(settings.scale_idle_seconds * 1000);
  sample();
  const overlay = diskUsage(srv.overlayDir);
  const openFd = openFilesAllocated(srv.pid, srv.overlayDir);
  const rssIdle = statusKiB(srv.pid, 'VmRSS');
  // One throwaway session while everything else sits idle: is the server still responsive?
  let probeMs = null;
  try {
    const t = performance.now();
    const c = await NbdConnection.open(srv.endpoint.target, def.exportName);
    const d = await c.pread(4096, 0);
    await c.disconnect();
    probeMs = performance.now() - t;
    if (!d.equals(baseBytes(baseFd, 0, 4096))) results.messages.push(`scale ${mode}: probe session read wrong data`);
  } catch (err) {
    results.messages.push(`scale ${mode}: probe session failed: ${err.message}`);
  }
  const alive1 = alive(srv.pid);
  await pool(opened.conns.length, 64, async (i) => {
    try {
      await opened.conns[i].disconnect();
    } catch {
      opened.conns[i].destroy();
    }
  });
  await sleep(500);
  sample();
  clearInterval(timer);
  const afterClose = diskUsage(srv.overlayDir);
  const rssAfterClose = statusKiB(srv.pid, 'VmRSS');
  const cpu1 = cpuSeconds(srv.pid);
  const hwm = statusKiB(srv.pid, 'VmHWM');
  const open = opened.conns.length;
  const r = {
    status: alive1 && open > 0 ? 'ok' : 'fail',
    mode,
    open,
    errors: opened.errors,
    first_error: opened.firstError,
    mismatches: opened.mismatches,
    open_seconds: round(opened.openSeconds, 2),
    bytes_written: opened.bytesWritten,
    rss_before_kib: rssBefore,
    rss_max_kib: rssMax,
    rss_idle_kib: rssIdle,
    rss_after_close_kib: rssAfterClose,
    vm_hwm_kib: hwm,
    rss_per_connection_bytes: open > 0 && rssBefore !== null ? Math.round(((rssMax - rssBefore) * 1024) / open) : null,
    max_open_fds: fdMax,
    overlay,
    open_fd_overlay: openFd,
    overlay_after_close: afterClose,
    probe_session_ms: probeMs === null ? null : round(probeMs, 2),
    server_cpu_s: cpu0 !== null && cpu1 !== null ? round(cpu1 - cpu0, 2) : null,
  };
  if (!alive1) r.note = `server died; ${tail(srv.logFile)}`;
  else if (open === 0) r.note = `no connection opened: ${opened.firstError}`;
  if (opened.errors > 0) results.messages.push(`scale ${mode}: ${opened.errors} connections failed, first: ${opened.firstError}`);
  if (opened.mismatches > 0) results.messages.push(`scale ${mode}: ${opened.mismatches} connections read back wrong data`);
  if (mode === 'read' && overlay.allocated_bytes !== 0)
    results.messages.push(`scale read: overlay dir uses ${overlay.allocated_bytes} bytes with read-only sessions (expected 0)`);
  if (afterClose.allocated_bytes !== 0 || afterClose.files !== 0) {
    results.messages.push(
      `scale ${mode}: after every connection closed the overlay dir still holds ${afterClose.files} files, ${afterClose.allocated_bytes} bytes`,
    );
  }
  await stopServer(srv);
  removeRun(srv);
  return r;
}

// ------------------------------------------------------------------ main

async function main() {
  log(
    `settings: BASE_MB=${settings.base_mb} RUNTIME=${settings.runtime} RAMP=${settings.ramp} SESSION_SECONDS=${settings.session_seconds} ` +
      `SCALE_CONNECTIONS=${settings.scale_connections} SERVERS="${settings.anchors.join(' ')}" WORKLOADS="${settings.workloads.join(' ')}"`,
  );
  if (runWorkloads.some((w) => !w.startsWith('sessions'))) {
    if (spawnSync('fio', ['--enghelp=nbd'], { stdio: 'ignore' }).status !== 0)
      die("fio with the 'nbd' engine is needed (Debian: fio)");
  }
  log(`creating a ${settings.base_mb} MiB pseudo-random base in ${WORK}`);
  results.base.method = makeBase();
  results.base.size_bytes = BASE_SIZE;
  results.base.sha256 = sha256(BASE);
  results.base.unchanged = true;
  baseFd = openSync(BASE, 'r');

  results.versions = {
    node: process.version,
    'nbd-cow': JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')).version,
    fio: versionOf('fio', ['--version']),
  };
  for (const a of serverNames) {
    const bin = SERVERS[a].binary;
    if (bin === null || results.versions[bin] !== undefined) continue; // null: nbd-cow and its variants
    results.versions[bin] =
      bin === 'nbd-server'
        ? (versionOf(bin, ['-V'])?.replace(/^This is nbd-server version /, '') ?? null)
        : versionOf(bin, ['--version']);
  }
  try {
    results.versions['nbd-cow'] +=
      ` (git ${spawnSync('git', ['-C', ROOT, 'rev-parse', '--short', 'HEAD'], { encoding: 'utf8' }).stdout.trim()})`;
  } catch {
    // no git
  }

  // Workload by workload, every server in turn: a slow spell of this shared host then lands on
  // one column for everyone rather than on one server's whole row.
  const runnable = [];
  for (const name of serverNames) {
    const def = SERVERS[name];
    const rec = { name, cow: def.cow, variant: def.variant === true, command: null, notes: def.notes, workloads: {} };
    results.servers.push(rec);
    if (def.binary && results.versions[def.binary] === null) {
      results.messages.push(`${name}: ${def.binary} is not installed; skipped`);
      log(`${name}: ${def.binary} not installed, skipped`);
      for (const w of runWorkloads) rec.workloads[w] = { status: 'skip', note: `${def.binary} not installed` };
      continue;
    }
    runnable.push(rec);
  }
  for (const w of runWorkloads) {
    for (const rec of runnable) {
      const { entry, srv } = await benchWorkload(rec.name, w);
      rec.workloads[w] = entry;
      if (rec.command === null && srv?.cmd) rec.command = showCommand(srv);
    }
    if (!checkBase(w)) return finish(2);
  }

  if (scaleWorkload) {
    const transport = scaleWorkload.split('@')[1] ?? settings.transport;
    results.scale = {
      connections: settings.scale_connections,
      transport,
      write_kib: settings.scale_write_kib,
      idle_seconds: settings.scale_idle_seconds,
      writers: await scalePhase('write', transport),
      readers: await scalePhase('read', transport),
    };
    if (!checkBase(`${OURS} scale`)) return finish(2);
  }
  return finish(startFailures > 0 ? 1 : 0);
}

async function finish(code) {
  results.ratios = computeRatios(results, runWorkloads);
  results.wall_s = Math.round((performance.now() - T0) / 1000);
  results.exit_code = code;
  results.memory_reference = MEMORY;
  const md = renderMarkdown(results);
  mkdirSync(dirname(settings.results), { recursive: true });
  writeFileSync(settings.results, `${JSON.stringify(results, null, 2)}\n`);
  writeFileSync(`${settings.results.replace(/\.json$/, '')}.md`, `${md}\n`);
  process.stdout.write(`${md}\n`);
  log(`JSON: ${settings.results}; wall time ${results.wall_s} s; exit ${code}`);
  if (baseFd !== null) closeSync(baseFd);
  await cleanupAndExit(code);
}

main();
