// nbd-cow benchmark driver. Run through bench/run.sh (which compiles it to dist/bench/bench.js,
// raises the fd limit and stops leftover servers by PID); settings come from the environment,
// see bench/README.md. Markdown goes to stdout (and results/latest.md next to the JSON),
// progress to stderr. Exit status: 0, or 1 if a server failed to start, or 2 if the base image
// changed (3: internal error, 130: signal).

import { type ChildProcess, spawnSync } from 'node:child_process';
import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { NbdSession } from '../test/helpers/raw-nbd/session.js';
import { makeBase, primeMemory, sha256, warmBase } from './lib/base-image.js';
import { buildLayer, LAYER_TOKEN } from './lib/layer.js';
import { die, log } from './lib/log.js';
import { findPython, runNoisy } from './lib/noisy.js';
import {
  alive,
  childPids,
  exitOnSignalsAndErrors,
  sleep,
  startTime,
  stopPid,
  tail,
  treeCpuSeconds,
  treeStatusKiB,
} from './lib/proc.js';
import { computeRatios, MEMORY, OURS, renderMarkdown } from './lib/report.js';
import type { Results, ScalePhase, ServerRecord, WorkloadEntry } from './lib/results.js';
import { medianRound } from './lib/rounds.js';
import { runScalePhase } from './lib/scale.js';
import {
  type RunningServer,
  SERVERS,
  type ServerDef,
  type StartedServer,
  type StartFailure,
  type Transport,
} from './lib/servers.js';
import { defaultResultsPath, readSettings, splitWorkload } from './lib/settings.js';
import { establishedTo } from './lib/tcp-peers.js';
import { errorText, FIO_WORKLOADS, FioError, fioWrites, round, runFio, runSessions } from './lib/workloads.js';

// This file runs as dist/bench/bench.js: the checkout is two levels up.
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const T0 = performance.now();

// ------------------------------------------------------------------ settings

const settings = readSettings(process.env, defaultResultsPath(ROOT));

/** SERVERS plus one nbd-cow row per OURS_VARIANTS flag set. */
const servers: Record<string, ServerDef> = { ...SERVERS };
const ours = SERVERS[OURS];
if (ours === undefined) throw new Error(`no ${OURS} in SERVERS`);
const variantNames = settings.ours_variants.map((args) => {
  const name = `${OURS} ${args.join(' ')}`;
  servers[name] = {
    ...ours,
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

/** A server named in SERVERS= (checked by readSettings) or a variant. */
function serverDef(name: string): ServerDef {
  const def = servers[name];
  if (def === undefined) throw new Error(`unknown server '${name}'`);
  return def;
}

// ------------------------------------------------------------------ temp dir, cleanup

const WORK = mkdtempSync(join(os.tmpdir(), 'nbd-cow-bench-'));
const BASE = join(WORK, 'base.raw');
const BASE_SIZE = settings.base_mb * 1024 * 1024;
/** The frozen layer a variant with {layer} in its flags serves (bench/lib/layer.ts). */
const LAYER = join(WORK, 'layer.cow');
/** Servers running now, by PID. */
const live = new Map<number, { child: ChildProcess | null; startedAt: string | null }>();
/** fio child processes running now. */
const clients = new Set<ChildProcess>();
let stopping = false; // set once by a signal or an internal error: start nothing new
let startsInFlight = 0; // def.start() calls that have not returned a PID yet

/** Never settles: once stopping, cleanupAndExit() finishes the run. */
const hang = (): Promise<never> => new Promise(() => undefined);

async function stopServer(srv: StartedServer): Promise<void> {
  const v = live.get(srv.pid);
  if (!v) return; // never started, or already known to be gone
  await stopPid(srv.pid, v.startedAt, { child: v.child, log });
  live.delete(srv.pid);
}

async function cleanupAndExit(code: number): Promise<never> {
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

exitOnSignalsAndErrors(() => stopping, cleanupAndExit, log);

// ------------------------------------------------------------------ one server start

const results: Results = {
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
  // Filled in by main() before anything reads them; the keys keep the JSON's order.
  base: { method: '', size_bytes: 0, sha256: '', unchanged: true },
  servers: [],
  scale: null,
  ratios: {},
  messages: [],
};

let startFailures = 0;
let runCounter = 0;

/** Start `name` with a fresh run dir; wait until a handshake reports the base's size. */
async function startServer(name: string, transport: Transport): Promise<RunningServer | StartFailure> {
  if (stopping) await hang();
  const def = serverDef(name);
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
    oursArgs: (def.oursArgs ?? settings.ours_args).map((arg) => (arg === LAYER_TOKEN ? LAYER : arg)),
    exportName: def.exportName,
    root: ROOT,
  };
  let started: StartedServer;
  startsInFlight++;
  try {
    started = await def.start(ctx);
    live.set(started.pid, { child: started.child, startedAt: startTime(started.pid) });
  } catch (err) {
    return { error: `start failed: ${errorText(err)}; ${tail(logFile)}`, run };
  } finally {
    startsInFlight--;
    closeSync(logFd);
  }
  const srv: RunningServer = { ...started, run, logFile };
  if (stopping) await hang(); // cleanupAndExit stops it

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
      const c = await NbdSession.open(srv.endpoint.target, def.exportName, { timeoutMs: 3000 });
      const size = c.size;
      await c.disconnect();
      if (size !== BASE_SIZE) {
        await stopServer(srv);
        return { error: `export size ${size}, expected ${BASE_SIZE}`, run };
      }
      // nbd-server's child for this probe exits; nbd-cow's workers (--workers N) stay.
      await waitChildren(srv.pid, name.startsWith(OURS) ? childPids(srv.pid) : []);
      return srv;
    } catch (err) {
      lastErr = errorText(err);
      await sleep(50);
    }
  }
  await stopServer(srv);
  return { error: `not ready after ${settings.ready_timeout_s} s: ${lastErr}; ${tail(logFile)}`, run };
}

/** A forking server (nbd-server) adds a connection's CPU time only once it reaped the child. */
/** Wait (at most `ms`) until the children `pid` has beyond `keep` are gone: nbd-server's per-client forks, not nbd-cow's workers. */
async function waitChildren(pid: number, keep: readonly number[], ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (childPids(pid).some((c) => !keep.includes(c)) && Date.now() < deadline) await sleep(50);
}

function removeRun(srv: RunningServer): void {
  if (!settings.keep_tmp && srv.run) rmSync(srv.run, { recursive: true, force: true });
}

// ------------------------------------------------------------------ workloads per server

let baseFd: number | null = null;

/** The python3 with python3-libnbd for noisy-neighbour; looked up once, if that workload runs. */
const noisyPython = runWorkloads.some((w) => w.startsWith('noisy-neighbour')) ? findPython(process.env) : null;

/** Established connections to the server now (TCP: to its port, from /proc; unix: to its socket path, by `ss`). */
function connectionCounter(srv: RunningServer): () => number | null {
  const { port, socket } = srv.endpoint;
  if (port !== null) return () => establishedTo(port);
  if (!socket) return () => null;
  const args = ['-Hxn', 'state', 'established', 'src', socket];
  return () => {
    const r = spawnSync('ss', args, { encoding: 'utf8', timeout: 5000 });
    return r.status === 0 ? r.stdout.split('\n').filter((l) => l.trim()).length : null;
  };
}

/** Append `note` to the entry's note, if it has one already, after a '; '. */
const addNote = (entry: WorkloadEntry, note: string): void => {
  entry.note = `${entry.note ? `${entry.note}; ` : ''}${note}`;
};

async function measure(def: ServerDef, srv: RunningServer, base: string, transport: Transport): Promise<WorkloadEntry> {
  try {
    if (base === 'sessions') {
      const r = await runSessions({
        target: srv.endpoint.target,
        exportName: def.exportName,
        seconds: settings.session_seconds,
        rampSeconds: settings.ramp,
        baseFd: def.servesBase ? baseFd : null,
        expectSize: BASE_SIZE,
      });
      const entry: WorkloadEntry = { status: r.sessions > 0 && r.mismatches === 0 ? 'ok' : 'fail', transport, ...r };
      if (r.errors > 0) entry.note = `${r.errors} failed sessions, last: ${r.last_error}`;
      if (r.mismatches > 0) addNote(entry, `${r.mismatches} reads differ from the base`);
      return entry;
    }
    if (base === 'noisy-neighbour') {
      if (noisyPython === null)
        return { status: 'skip', transport, note: 'no python3 with python3-libnbd (import nbd); set NOISY_PYTHON' };
      const logFd = openSync(join(srv.run, 'noisy.log'), 'a');
      try {
        const noisy = await runNoisy({
          python: noisyPython,
          script: join(ROOT, 'bench', 'noisy_neighbour.py'),
          uri: srv.endpoint.uri,
          base: BASE,
          size: BASE_SIZE,
          warmBytes: Math.min(settings.noisy_warm_mb * 1024 * 1024, BASE_SIZE / 2),
          seconds: settings.noisy_seconds,
          coldBs: 65536,
          coldQd: 16,
          logFd,
          clients,
          env: srv.endpoint.clientEnv,
        });
        return { status: 'ok', transport, noisy };
      } catch (err) {
        return { status: 'fail', transport, note: `${errorText(err)}; ${tail(join(srv.run, 'noisy.log'))}` };
      } finally {
        closeSync(logFd);
      }
    }
    const logFd = openSync(join(srv.run, 'fio.log'), 'a');
    try {
      const r = await runFio(base, srv.endpoint.uri, {
        runtime: settings.runtime,
        ramp: settings.ramp,
        outFile: join(srv.run, 'fio.json'),
        logFd,
        clients,
        env: srv.endpoint.clientEnv,
        countConnections: connectionCounter(srv),
      });
      const entry: WorkloadEntry = { status: 'ok', transport, ...r };
      if (r.connections_seen !== null && r.connections_seen !== r.numjobs)
        entry.note = `fio ran ${r.numjobs} jobs, the server had ${r.connections_seen} connections at most`;
      return entry;
    } finally {
      closeSync(logFd);
    }
  } catch (err) {
    const partial = err instanceof FioError ? err.partial : {};
    return { status: 'fail', transport, ...partial, note: `${errorText(err)}; ${tail(join(srv.run, 'fio.log'))}` };
  }
}

async function benchWorkload(name: string, w: string): Promise<{ entry: WorkloadEntry; srv?: RunningServer }> {
  const def = serverDef(name);
  const { base, transport } = splitWorkload(w, settings.transport);
  log(`${name}: ${w}`);
  const srv = await startServer(name, transport);
  if ('error' in srv) {
    startFailures++;
    log(`${name}: ${w}: server did not start: ${srv.error}`);
    return { entry: { status: 'fail', transport, note: `server did not start: ${srv.error}` } };
  }
  if (settings.warm_base) warmBase(BASE);
  const fio = FIO_WORKLOADS[base];
  if (settings.prime_memory && fio !== undefined && fioWrites(fio)) primeMemory(join(WORK, 'prime.scratch'), BASE_SIZE);
  const lasting = childPids(srv.pid);
  const cpu0 = treeCpuSeconds(srv.pid);
  const t0 = performance.now();
  const entry = await measure(def, srv, base, transport);
  const wall = (performance.now() - t0) / 1000;
  if (stopping) await hang(); // interrupted: cleanupAndExit finishes the job
  await waitChildren(srv.pid, lasting);
  const cpu1 = treeCpuSeconds(srv.pid);
  entry.server_peak_rss_kib = treeStatusKiB(srv.pid, 'VmHWM');
  if (!alive(srv.pid)) {
    entry.status = 'fail';
    addNote(entry, `server died during the workload; ${tail(srv.logFile)}`);
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
function showCommand(srv: StartedServer): string {
  let c = srv.cmd.split(WORK).join('$TMP');
  if (srv.endpoint.port) c = c.split(String(srv.endpoint.port)).join('{port}');
  return c;
}

function versionOf(cmd: string, args: readonly string[]): string | null {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  if (r.error) return null;
  return `${r.stdout}${r.stderr}`.split('\n')[0]?.trim() ?? '';
}

function checkBase(after: string): boolean {
  const sum = sha256(BASE);
  if (sum !== results.base.sha256) {
    results.base.unchanged = false;
    results.base.sha256_after = sum;
    results.messages.push(`the base image's sha256 changed after ${after}; stopped`);
    return false;
  }
  return true;
}

// ------------------------------------------------------------------ scale run (nbd-cow and its variants)

function scalePhase(mode: 'write' | 'read', transport: Transport, name = OURS): Promise<ScalePhase> {
  const def = serverDef(name);
  return runScalePhase(mode, {
    settings,
    exportName: def.exportName,
    baseFd,
    messages: results.messages,
    start: async () => {
      log(`${name}: scale ${mode}: ${settings.scale_connections} connections`);
      const srv = await startServer(name, transport);
      if ('error' in srv) {
        startFailures++;
        return srv;
      }
      const rec = results.servers.find((s) => s.name === name);
      if (rec && rec.command === null) rec.command = showCommand(srv);
      return srv;
    },
    finish: async (srv) => {
      await stopServer(srv);
      removeRun(srv);
    },
  });
}

// ------------------------------------------------------------------ main

function recordVersions(): void {
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { version?: unknown };
  results.versions = {
    node: process.version,
    'nbd-cow': String(pkg.version),
    fio: versionOf('fio', ['--version']),
  };
  for (const a of serverNames) {
    const bin = serverDef(a).binary;
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
}

async function main(): Promise<void> {
  log(
    `settings: BASE_MB=${settings.base_mb} RUNTIME=${settings.runtime} RAMP=${settings.ramp} SESSION_SECONDS=${settings.session_seconds} ` +
      `SCALE_CONNECTIONS=${settings.scale_connections} ROUNDS=${settings.rounds} SERVERS="${settings.anchors.join(' ')}" WORKLOADS="${settings.workloads.join(' ')}"`,
  );
  if (runWorkloads.some((w) => !w.startsWith('sessions') && !w.startsWith('noisy-neighbour'))) {
    if (spawnSync('fio', ['--enghelp=nbd'], { stdio: 'ignore' }).status !== 0)
      die("fio with the 'nbd' engine is needed (Debian: fio)");
  }
  log(`creating a ${settings.base_mb} MiB pseudo-random base in ${WORK}`);
  results.base.method = makeBase(BASE, BASE_SIZE);
  results.base.size_bytes = BASE_SIZE;
  results.base.sha256 = sha256(BASE);
  results.base.unchanged = true;
  if (settings.ours_variants.some((args) => args.includes(LAYER_TOKEN))) {
    const share = await buildLayer(BASE, LAYER);
    log(`built a frozen layer holding ${Math.round(share * 100)} % of the base for ${LAYER_TOKEN}: ${LAYER}`);
  }
  baseFd = openSync(BASE, 'r');
  recordVersions();

  // Workload by workload, every server in turn: a slow spell of this shared host then lands on
  // one column for everyone rather than on one server's whole row.
  const runnable: ServerRecord[] = [];
  for (const name of serverNames) {
    const def = serverDef(name);
    const rec: ServerRecord = {
      name,
      cow: def.cow,
      variant: def.variant === true,
      command: null,
      notes: def.notes,
      workloads: {},
    };
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
    const rounds = new Map<ServerRecord, WorkloadEntry[]>(runnable.map((rec) => [rec, []]));
    let baseUnchanged = true;
    for (let round = 1; round <= settings.rounds && baseUnchanged; round++) {
      if (settings.rounds > 1) log(`${w}: round ${round} of ${settings.rounds}`);
      for (const rec of runnable) {
        const { entry, srv } = await benchWorkload(rec.name, w);
        rounds.get(rec)?.push(entry);
        if (rec.command === null && srv?.cmd) rec.command = showCommand(srv);
      }
      baseUnchanged = checkBase(w);
    }
    for (const rec of runnable) rec.workloads[w] = medianRound(w, rounds.get(rec) ?? []);
    if (!baseUnchanged) return finish(2);
  }

  if (scaleWorkload) {
    const { transport } = splitWorkload(scaleWorkload, settings.transport);
    results.scale = {
      connections: settings.scale_connections,
      transport,
      write_kib: settings.scale_write_kib,
      idle_seconds: settings.scale_idle_seconds,
      writers: await scalePhase('write', transport),
      readers: await scalePhase('read', transport),
    };
    if (!checkBase(`${OURS} scale`)) return finish(2);
    const variants = [];
    for (const name of variantNames) {
      variants.push({
        server: name,
        writers: await scalePhase('write', transport, name),
        readers: await scalePhase('read', transport, name),
      });
      if (!checkBase(`${name} scale`)) return finish(2);
    }
    if (variants.length > 0) results.scale = { ...results.scale, variants };
  }
  return finish(startFailures > 0 ? 1 : 0);
}

async function finish(code: number): Promise<void> {
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

void main();
