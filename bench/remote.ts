// A remote base (README "Remote base images") against the same base as a local file and against
// nbdkit's curl plugin under its cache filter, with nginx on 127.0.0.1 serving the random base:
//   1. cold, first full read: `nbdcopy URI null:` of the whole export, timed, and what the
//      origin sent for it (nginx's access log);
//   2. cold, 16 clients at once: fio, 16 connections of a boot-like random read mix, and how many
//      bytes the origin sent more than once (the goal: none for nbd-cow);
//   3. warm: the fio columns of `make bench` on a cache filled once by --prefetch (every later
//      start must fetch nothing but its probe), beside the local file and a warmed nbdkit;
//      WARM_ROUNDS rounds of local and URL in turn, the ratio of each round's pair, and their
//      median: a host whose speed drifts moves both halves of a pair alike.
// Prints the tables, writes bench/results/remote-latest.json. A benchmark, never a test:
// `make bench-remote` (bench/README.md, "Remote base").

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { appendFileSync, closeSync, mkdirSync, mkdtempSync, openSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { freePort } from '../test/helpers/processes.js';
import { NbdSession } from '../test/helpers/raw-nbd/session.js';
import { makeBase, primeMemory, sha256, warmBase } from './lib/base-image.js';
import { die, envNumber, log } from './lib/log.js';
import { type Nginx, nginxBinary, type OriginTraffic, originTraffic, startNginx } from './lib/nginx.js';
import { alive, exitOnSignalsAndErrors, registerPid, sleep, startTime, stopPid, tail, treeCpuSeconds } from './lib/proc.js';
import { establishedTo } from './lib/tcp-peers.js';
import { errorText, FIO_WORKLOADS, FioError, type FioResult, fioWrites, round, runFio } from './lib/workloads.js';

// This file runs as dist/bench/remote.js: the checkout is two levels up.
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const CLI = join(ROOT, 'dist', 'bin', 'nbd-cow.js');
const MiB = 1024 * 1024;
const T0 = performance.now();

const settings = {
  base_mb: Math.floor(envNumber('BASE_MB', 1024)),
  runtime: Math.floor(envNumber('RUNTIME', 10)),
  ramp: Math.floor(envNumber('RAMP', 2)),
  ready_timeout_s: envNumber('READY_TIMEOUT', 20),
  prefetch_timeout_s: envNumber('PREFETCH_TIMEOUT', 600),
  cold_workload: 'boot-read-16c',
  warm_workloads: ['seq-read', 'rand-read', 'rand-read-qd1', 'rand-write', 'seq-write'],
  warm_rounds: Math.max(1, Math.floor(envNumber('WARM_ROUNDS', 3))),
  /** `--workers` of nbd-cow's rows, local file and URL alike (1: one process, the default). */
  workers: Math.max(1, Math.floor(envNumber('WORKERS', 1))),
  results: resolve(process.env['REMOTE_RESULTS'] || join(ROOT, 'bench', 'results', 'remote-latest.json')),
  keep_tmp: process.env['KEEP_TMP'] === '1',
  prime_memory: process.env['PRIME_MEMORY'] !== '0',
  warm_base: process.env['WARM_BASE'] !== '0',
};

const WORK = mkdtempSync(join(os.tmpdir(), 'nbd-cow-remote-'));
const WWW = join(WORK, 'www');
const BASE = join(WWW, 'base.raw');
const SIZE = settings.base_mb * MiB;
/** The cache --prefetch fills once; every warm start of nbd-cow on the URL reuses it. */
const FULL_CACHE = join(WORK, 'cache-full');

// ------------------------------------------------------------------ processes and cleanup

/** Servers and nginx running now, by PID. */
const live = new Map<number, { child: ChildProcess; startedAt: string | null }>();
/** fio and nbdcopy running now. */
const clients = new Set<ChildProcess>();
let nginx: Nginx | null = null;
let stopping = false;

function track(child: ChildProcess): void {
  const pid = child.pid;
  if (!pid) return;
  registerPid(pid);
  live.set(pid, { child, startedAt: startTime(pid) });
}

async function stopTracked(pid: number, graceMs = 5000): Promise<void> {
  const v = live.get(pid);
  if (v === undefined) return;
  await stopPid(pid, v.startedAt, { child: v.child, log, graceMs });
  live.delete(pid);
}

async function cleanupAndExit(code: number): Promise<never> {
  stopping = true;
  for (const c of clients) c.kill('SIGTERM');
  // nginx last: a server stopping may still be fetching.
  for (const pid of [...live.keys()].sort((a, b) => Number(a === nginx?.pid) - Number(b === nginx?.pid))) {
    log(`stopping pid ${pid}`);
    await stopTracked(pid, 2000);
  }
  if (settings.keep_tmp) log(`kept temp dir ${WORK}`);
  else rmSync(WORK, { recursive: true, force: true });
  process.exit(code);
}

const internalError = exitOnSignalsAndErrors(() => stopping, cleanupAndExit, log);

/** Never settles: once stopping, cleanupAndExit() finishes the run. */
const hang = (): Promise<never> => new Promise(() => undefined);

// ------------------------------------------------------------------ the servers

type Kind = 'local' | 'remote' | 'nbdkit';

const NAMES: Record<Kind, string> = {
  local: 'nbd-cow, local file',
  remote: 'nbd-cow, URL',
  nbdkit: 'nbdkit-curl-cache',
};

interface StartOptions {
  /** nbd-cow on the URL: its --cache-dir. */
  readonly cacheDir?: string;
  readonly prefetch?: boolean;
  /** nbd-cow: --metrics 127.0.0.1:0 (its URL is the second stdout line). */
  readonly metrics?: boolean;
}

interface Running {
  readonly kind: Kind;
  readonly pid: number;
  readonly uri: string;
  readonly port: number;
  readonly metricsUrl: string | null;
  readonly run: string;
  readonly logFile: string;
  readonly cmd: string;
  /** Resolves with the first stderr line matching `re` (null if the server exits first). */
  readonly stderrLine: (re: RegExp) => Promise<string | null>;
}

let runCounter = 0;
let nbdkitOk = true;

const quote = (a: string): string => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`);

/** A fresh server of `kind` with a new run dir; resolves once a handshake sees the base's size. */
async function startServer(kind: Kind, options: StartOptions = {}): Promise<Running | { error: string }> {
  if (stopping) await hang();
  const run = join(WORK, 'run', `${++runCounter}-${kind}`);
  const overlayDir = join(run, 'overlay');
  mkdirSync(overlayDir, { recursive: true });
  const logFile = join(run, 'server.log');
  const url = nginx?.url('base.raw') ?? '';
  let cmd: string;
  let args: string[];
  let env: NodeJS.ProcessEnv = process.env;
  let port = 0;
  if (kind === 'nbdkit') {
    port = await freePort();
    const tmp = join(run, 'tmp');
    mkdirSync(tmp);
    env = { ...process.env, TMPDIR: tmp };
    cmd = 'nbdkit';
    // Filters nearest the client first: the cow overlay over the block cache over curl. Without
    // cache-on-read=true the cache filter keeps writes only.
    args = [
      '-f',
      '--exit-with-parent',
      '-i',
      '127.0.0.1',
      '-p',
      String(port),
      '--filter=cow',
      '--filter=cache',
      'curl',
      `url=${url}`,
      'cache-on-read=true',
    ];
  } else {
    cmd = process.execPath;
    args = [CLI, 'serve', kind === 'local' ? BASE : url, '-b', '127.0.0.1', '-p', '0', '--overlay-dir', overlayDir];
    if (kind === 'remote') {
      args.push('--cache-dir', options.cacheDir ?? join(run, 'cache'));
      if (options.prefetch === true) args.push('--prefetch');
    }
    if (options.metrics === true) args.push('--metrics', '127.0.0.1:0');
    if (settings.workers > 1) args.push('--workers', String(settings.workers));
  }
  const shown = [
    kind === 'nbdkit' ? `TMPDIR=RUN/tmp ${cmd}` : 'node dist/bin/nbd-cow.js',
    ...args.slice(kind === 'nbdkit' ? 0 : 1),
  ]
    .map((a) => a.replace(WORK, 'WORK'))
    .map(quote)
    .join(' ');
  const child = spawn(cmd, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  track(child);
  const pid = child.pid ?? 0;
  const stdoutLines: string[] = [];
  let stderrText = '';
  const watchers: Array<{ re: RegExp; done: (line: string | null) => void }> = [];
  let exited = false;
  const onExit = new Promise<void>((r) => child.once('exit', () => r()));
  void onExit.then(() => {
    exited = true;
    for (const w of watchers.splice(0)) w.done(null);
  });
  let outBuf = '';
  child.stdout?.setEncoding('utf8').on('data', (s: string) => {
    appendFileSync(join(run, 'stdout.log'), s);
    outBuf += s;
    const lines = outBuf.split('\n');
    outBuf = lines.pop() ?? '';
    stdoutLines.push(...lines);
  });
  let errBuf = '';
  child.stderr?.setEncoding('utf8').on('data', (s: string) => {
    appendFileSync(logFile, s);
    stderrText += s;
    errBuf += s;
    const lines = errBuf.split('\n');
    errBuf = lines.pop() ?? '';
    for (const line of lines) {
      for (const w of [...watchers]) {
        if (w.re.test(line)) {
          watchers.splice(watchers.indexOf(w), 1);
          w.done(line);
        }
      }
    }
  });
  const stderrLine = (re: RegExp): Promise<string | null> => {
    const seen = stderrText.split('\n').find((line) => re.test(line));
    if (seen !== undefined) return Promise.resolve(seen);
    if (exited) return Promise.resolve(null);
    return new Promise((done) => watchers.push({ re, done }));
  };
  const fail = async (why: string): Promise<{ error: string }> => {
    await stopTracked(pid);
    return { error: `${NAMES[kind]}: ${why}; ${tail(logFile)}` };
  };

  const deadline = Date.now() + settings.ready_timeout_s * 1000;
  let uri = `nbd://127.0.0.1:${port}`;
  let metricsUrl: string | null = null;
  if (kind !== 'nbdkit') {
    // nbd-cow prints its URI once it listens, then the metrics URL.
    const want = options.metrics === true ? 2 : 1;
    while (stdoutLines.length < want) {
      if (exited) return fail('exited during start-up');
      if (Date.now() > deadline) return fail(`printed no URI within ${settings.ready_timeout_s} s`);
      await sleep(20);
    }
    uri = stdoutLines[0] ?? '';
    metricsUrl = options.metrics === true ? (stdoutLines[1] ?? null) : null;
    const m = /:(\d+)(\/|$)/.exec(uri.replace(/^nbd:\/\//, ''));
    port = Number(m?.[1] ?? 0);
    if (!port) return fail(`no port in its URI line '${uri}'`);
  }
  let lastErr = 'not accepting connections';
  while (Date.now() < deadline) {
    if (exited || !alive(pid)) return fail('exited during start-up');
    try {
      const c = await NbdSession.open({ kind: 'tcp', host: '127.0.0.1', port }, '', { timeoutMs: 3000 });
      const size = c.size;
      await c.disconnect();
      if (size !== SIZE) return fail(`export size ${size}, expected ${SIZE}`);
      return { kind, pid, uri, port, metricsUrl, run, logFile, cmd: shown, stderrLine };
    } catch (err) {
      lastErr = errorText(err);
      await sleep(50);
    }
  }
  return fail(`not ready after ${settings.ready_timeout_s} s: ${lastErr}`);
}

function removeRun(srv: Running): void {
  if (!settings.keep_tmp) rmSync(srv.run, { recursive: true, force: true });
}

/** Established connections to 127.0.0.1:port now (ss), or null. */

/** Sum of every sample of `name` in a Prometheus text page (all its label sets), or null if absent. */
function metricValue(page: string, name: string): number | null {
  let sum: number | null = null;
  for (const line of page.split('\n')) {
    if (!line.startsWith(name) || !/[\s{]/.test(line.charAt(name.length))) continue;
    const v = Number(line.trim().split(/\s+/).pop());
    if (Number.isFinite(v)) sum = (sum ?? 0) + v;
  }
  return sum;
}

// ------------------------------------------------------------------ clients

interface CopyResult {
  readonly seconds: number;
  readonly MiB_per_s: number | null;
  /** The most connections nbdcopy had open to the server at once (multi-conn: up to 4). */
  readonly connections_seen: number | null;
}

/** `nbdcopy URI null:`: the whole export read once and thrown away; throws if it fails. */
function nbdcopy(srv: Running): Promise<CopyResult> {
  return new Promise((done, fail) => {
    const errFile = join(srv.run, 'nbdcopy.log');
    const fd = openSync(errFile, 'a');
    const start = performance.now();
    const child = spawn('nbdcopy', [srv.uri, 'null:'], { stdio: ['ignore', fd, fd] });
    closeSync(fd);
    clients.add(child);
    let seen: number | null = null;
    const sampler = setInterval(() => {
      const n = establishedTo(srv.port);
      if (n !== null) seen = Math.max(seen ?? 0, n);
    }, 100);
    child.once('error', (err) => {
      clearInterval(sampler);
      clients.delete(child);
      fail(err);
    });
    child.once('exit', (code, signal) => {
      const seconds = (performance.now() - start) / 1000;
      clearInterval(sampler);
      clients.delete(child);
      if (code !== 0) {
        fail(new Error(`nbdcopy exited with ${code ?? signal}: ${tail(errFile)}`));
        return;
      }
      done({ seconds: round(seconds, 3) ?? seconds, MiB_per_s: round(SIZE / MiB / seconds), connections_seen: seen });
    });
  });
}

interface FioEntry {
  status: 'ok' | 'fail';
  note?: string;
  fio?: Partial<FioResult>;
}

async function fio(workload: string, srv: Running): Promise<FioEntry> {
  const logFd = openSync(join(srv.run, 'fio.log'), 'a');
  try {
    const r = await runFio(workload, srv.uri, {
      runtime: settings.runtime,
      ramp: settings.ramp,
      outFile: join(srv.run, 'fio.json'),
      logFd,
      clients,
      countConnections: () => establishedTo(srv.port),
    });
    return { status: 'ok', fio: r };
  } catch (err) {
    return {
      status: 'fail',
      note: `${errorText(err)}; ${tail(join(srv.run, 'fio.log'))}`,
      ...(err instanceof FioError ? { fio: err.partial } : {}),
    };
  } finally {
    closeSync(logFd);
  }
}

// ------------------------------------------------------------------ one measured start

/** Every start begins the same way: the base (which nginx serves too) and any cache warm in the page cache. */
function warmFiles(extraDirs: readonly string[] = []): void {
  if (!settings.warm_base) return;
  warmBase(BASE);
  for (const dir of extraDirs) {
    try {
      for (const f of readdirSync(dir)) if (f.endsWith('.data') || f.endsWith('.map')) warmBase(join(dir, f));
    } catch {
      // no cache yet
    }
  }
}

/**
 * Before a cold row: the previous row's block cache removed, memory primed and the base warmed,
 * so that every row fills its cache (nbd-cow's files, nbdkit's temp file) in pages the VM has
 * just freed. Measured by hand (2026-12-03): nbdkit's cold read took 1.3 s after our cache file
 * was removed and 3.1 s with it still there (2.4 GB in the page cache), twice the CPU too; the
 * bench left it there, so nbdkit's row paid for our cache's memory.
 */
function coldStart(cacheDir: string): void {
  rmSync(cacheDir, { recursive: true, force: true });
  if (settings.prime_memory) primeMemory(join(WORK, 'prime.scratch'), SIZE);
  warmFiles();
}

interface Measured<T> {
  status: 'ok' | 'fail';
  note?: string;
  cmd?: string;
  result?: T;
  /** What the origin sent between just before the start and just after the stop. */
  origin?: OriginTraffic;
  /** The server's CPU seconds from ready to just before the stop (all threads, children included). */
  server_cpu_s?: number | null;
  /** --metrics, scraped at the end. */
  metrics?: { fetched_bytes: number | null; distinct_read_bytes: number | null; fetches: number | null };
  /** nbdkit in the warm phase: its warming nbdcopy pass (not measured by fio). */
  warmup?: CopyResult;
}

/** Start a fresh server of `kind`, run `body` against it, stop it, and account the origin's traffic. */
async function measured<T>(
  label: string,
  kind: Kind,
  options: StartOptions,
  body: (srv: Running, m: Measured<T>) => Promise<T>,
): Promise<Measured<T>> {
  log(`${label}: ${NAMES[kind]}`);
  const mark = nginx?.mark() ?? 0;
  const srv = await startServer(kind, options);
  if ('error' in srv) {
    log(`  did not start: ${srv.error}`);
    return { status: 'fail', note: `did not start: ${srv.error}` };
  }
  const m: Measured<T> = { status: 'ok', cmd: srv.cmd };
  const cpu0 = treeCpuSeconds(srv.pid);
  try {
    m.result = await body(srv, m);
  } catch (err) {
    m.status = 'fail';
    m.note = errorText(err);
  }
  if (stopping) await hang();
  const cpu1 = treeCpuSeconds(srv.pid);
  m.server_cpu_s = cpu0 === null || cpu1 === null ? null : round(cpu1 - cpu0, 2);
  if (srv.metricsUrl !== null) {
    try {
      const page = await (await fetch(srv.metricsUrl)).text();
      m.metrics = {
        fetched_bytes: metricValue(page, 'nbd_cow_remote_fetched_bytes_total'),
        distinct_read_bytes: metricValue(page, 'nbd_cow_remote_distinct_read_bytes'),
        fetches: metricValue(page, 'nbd_cow_remote_fetches_total'),
      };
    } catch (err) {
      m.note = `${m.note ? `${m.note}; ` : ''}metrics scrape failed: ${errorText(err)}`;
    }
  }
  const wasAlive = alive(srv.pid);
  await stopTracked(srv.pid);
  if (!wasAlive && m.status === 'ok') {
    m.status = 'fail';
    m.note = `the server died; ${tail(srv.logFile)}`;
  }
  if (kind !== 'local' && nginx !== null) m.origin = originTraffic(await nginx.since(mark));
  if (m.status === 'ok') removeRun(srv);
  else log(`  ${label} failed: ${m.note}`);
  return m;
}

// ------------------------------------------------------------------ report helpers

const mib = (bytes: number | null | undefined, d = 1): string =>
  bytes === null || bytes === undefined ? '–' : (bytes / MiB).toFixed(d);
/** Bytes for a person: '0 B', '255 B', '12.3 KiB', '4.50 MiB'. */
function bytesText(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined) return '–';
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < MiB) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / MiB).toFixed(2)} MiB`;
}
const num = (x: number | null | undefined, d = 0): string =>
  x === null || x === undefined ? '–' : x.toLocaleString('en-US', { maximumFractionDigits: d, minimumFractionDigits: d });

/** The headline of a warm column: MiB/s for the sequential ones, IOPS for the random ones. */
const headlineKey = (w: string): 'MiB_per_s' | 'iops' => (w.startsWith('seq-') ? 'MiB_per_s' : 'iops');

/** The round whose headline is the median of the cell's rounds (the lower middle one of an even count). */
function medianRound(rounds: readonly Measured<FioEntry>[] | undefined, w: string): Measured<FioEntry> | undefined {
  if (rounds === undefined || rounds.length === 0) return undefined;
  if (rounds.some((m) => warmValue(m, w) === null)) return rounds.find((m) => warmValue(m, w) === null);
  const sorted = [...rounds].sort((a, b) => (warmValue(a, w) ?? 0) - (warmValue(b, w) ?? 0));
  return sorted[Math.floor((sorted.length - 1) / 2)];
}

function warmCell(rounds: readonly Measured<FioEntry>[] | undefined, w: string): string {
  const m = medianRound(rounds, w);
  if (m === undefined) return '–';
  const f = m.result?.fio;
  if (m.status !== 'ok' || m.result?.status !== 'ok' || f === undefined) return 'FAIL';
  const key = headlineKey(w);
  const head = key === 'MiB_per_s' ? `${num(f.MiB_per_s, 0)} MiB/s` : `${num(f.iops)} IOPS`;
  return `${head} (${num(f.lat_mean_us, 0)} / ${num(f.lat_p99_us, 0)} µs)`;
}

function warmValue(m: Measured<FioEntry> | undefined, w: string): number | null {
  if (m?.status !== 'ok' || m.result?.status !== 'ok') return null;
  return m.result.fio?.[headlineKey(w)] ?? null;
}

/** The median of the known values (the mean of the middle two of an even count), or null if any is unknown. */
function median(values: ReadonlyArray<number | null>): number | null {
  if (values.length === 0 || values.some((v) => v === null)) return null;
  const sorted = (values as number[]).slice().sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  const m = sorted.length % 2 === 1 ? (sorted[mid] as number) : ((sorted[mid - 1] as number) + (sorted[mid] as number)) / 2;
  return Math.round(m * 1000) / 1000;
}

/**
 * The warm phase's starts of one workload, in order, as [round, kind]: each round runs the local
 * file and the URL, the first of them alternating from round to round; nbdkit runs in round 0.
 */
function warmOrder(kinds: readonly Kind[], rounds: number): Array<[number, Kind]> {
  const order: Array<[number, Kind]> = [];
  for (let round = 0; round < rounds; round++) {
    const pair: Kind[] = round % 2 === 0 ? ['local', 'remote'] : ['remote', 'local'];
    for (const kind of pair) order.push([round, kind]);
    if (round === 0 && kinds.includes('nbdkit')) order.push([round, 'nbdkit']);
  }
  return order;
}

const ratio = (a: number | null, b: number | null): number | null =>
  a === null || b === null || b === 0 ? null : Math.round((a / b) * 1000) / 1000;

function originCells(o: OriginTraffic | undefined): string[] {
  if (o === undefined) return ['–', '–', '–'];
  return [num(o.requests), mib(o.bytes), bytesText(o.duplicate_bytes)];
}

// ------------------------------------------------------------------ main

function toolVersion(cmd: string, args: readonly string[]): string | null {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return r.status === 0 ? (`${r.stdout}${r.stderr}`.trim().split('\n')[0] ?? null) : null;
}

async function main(): Promise<number> {
  for (const tool of ['fio', 'nbdcopy', 'sha256sum']) {
    if (spawnSync('sh', ['-c', `command -v ${tool}`]).status !== 0) die(`${tool} not found (make bench-remote installs it)`);
  }
  if (nginxBinary() === null) die('nginx not found (make bench-remote installs it)');
  if (spawnSync('nbdkit', ['--filter=cow', '--filter=cache', 'curl', '--dump-plugin'], { stdio: 'ignore' }).status !== 0) {
    log('nbdkit with its curl plugin and cow and cache filters not found: its rows are skipped');
    nbdkitOk = false;
  }
  const kinds: Kind[] = nbdkitOk ? ['local', 'remote', 'nbdkit'] : ['local', 'remote'];
  const phase = settings.runtime + settings.ramp;
  const fioRows = kinds.length + settings.warm_workloads.length * warmOrder(kinds, settings.warm_rounds).length;
  log(
    `settings: BASE_MB=${settings.base_mb} RUNTIME=${settings.runtime} RAMP=${settings.ramp}; ` +
      // Measured: each timed fio row costs its phase and about 1 s more; the rest (base, cold
      // reads, prefetch, warming, seq-write) about 1 minute per GiB of base on 2 cores.
      `WARM_ROUNDS=${settings.warm_rounds}; about ${Math.ceil((fioRows * (phase + 1) + (settings.base_mb / 1024) * 60) / 60)} min`,
  );
  mkdirSync(WWW, { recursive: true });
  const method = makeBase(BASE, SIZE);
  log(`base: ${settings.base_mb} MiB of random bytes (${method})`);
  const baseSum = sha256(BASE);
  nginx = await startNginx(join(WORK, 'nginx'), WWW, track);
  log(`nginx pid ${nginx.pid} serving ${nginx.url('base.raw')}`);

  // 1. Cold, first full read.
  const coldRead: Partial<Record<Kind, Measured<CopyResult>>> = {};
  for (const kind of kinds) {
    coldStart(join(WORK, 'cache-cold-read'));
    coldRead[kind] = await measured('cold full read', kind, { cacheDir: join(WORK, 'cache-cold-read') }, (srv) => nbdcopy(srv));
    const r = coldRead[kind];
    log(`  ${r?.result?.seconds ?? '–'} s, origin ${mib(r?.origin?.bytes)} MiB in ${r?.origin?.requests ?? '–'} requests`);
  }

  // The cache every warm start of nbd-cow on the URL reuses: filled once by --prefetch.
  const prefetch = await measured<{ seconds: number; line: string }>(
    'prefetch into the warm cache',
    'remote',
    { cacheDir: FULL_CACHE, prefetch: true },
    async (srv) => {
      const t0 = performance.now();
      const line = await Promise.race([
        srv.stderrLine(/prefetch of .* (done|stopped)/),
        sleep(settings.prefetch_timeout_s * 1000).then(() => null),
      ]);
      if (line === null) throw new Error(`no "prefetch of … done" line within ${settings.prefetch_timeout_s} s`);
      if (!/done/.test(line)) throw new Error(line);
      // The line comes once the last block is fetched; the server's uptime counts too (the probe).
      return { seconds: round((performance.now() - t0) / 1000, 2) ?? 0, line: line.trim() };
    },
  );
  if (prefetch.status !== 'ok') log('warning: the prefetch failed; the warm nbd-cow-on-URL numbers read a partial cache');
  else log(`  ${prefetch.result?.line}`);

  // 2. Cold, 16 clients at once.
  const coldMany: Partial<Record<Kind, Measured<FioEntry>>> = {};
  for (const kind of kinds) {
    coldStart(join(WORK, 'cache-cold-many'));
    coldMany[kind] = await measured(
      `cold, ${FIO_WORKLOADS[settings.cold_workload]?.numjobs} clients`,
      kind,
      { cacheDir: join(WORK, 'cache-cold-many'), metrics: kind === 'remote' },
      (srv) => fio(settings.cold_workload, srv),
    );
    const r = coldMany[kind];
    log(
      `  ${r?.result?.fio?.MiB_per_s ?? '–'} MiB/s, origin ${mib(r?.origin?.bytes)} MiB, sent twice ${bytesText(r?.origin?.duplicate_bytes)}`,
    );
  }

  // 3. Warm: a fresh server per cell; per workload, WARM_ROUNDS rounds of the local file and the
  // URL in turn (which goes first alternates), nbdkit in the first round only (each of its starts
  // costs a full read to fill its cache).
  const warm: Record<string, Partial<Record<Kind, Measured<FioEntry>[]>>> = {};
  for (const w of settings.warm_workloads) {
    const cells: Partial<Record<Kind, Measured<FioEntry>[]>> = {};
    warm[w] = cells;
    const writes = fioWrites(FIO_WORKLOADS[w] ?? { rw: 'read', bs: '', iodepth: 0, timed: true });
    for (const [round, kind] of warmOrder(kinds, settings.warm_rounds)) {
      warmFiles(kind === 'remote' ? [FULL_CACHE] : []);
      if (settings.prime_memory && writes) primeMemory(join(WORK, 'prime.scratch'), SIZE);
      const entry = await measured<FioEntry>(`warm ${w}, round ${round + 1}`, kind, { cacheDir: FULL_CACHE }, async (srv, m) => {
        if (kind === 'nbdkit') {
          // The cache filter keeps what curl read: one full pass fills it, in this process.
          m.warmup = await nbdcopy(srv);
        }
        return fio(w, srv);
      });
      cells[kind] = [...(cells[kind] ?? []), entry];
      const f = entry.result?.fio;
      log(
        `  ${f ? `${f.MiB_per_s} MiB/s, ${f.iops} IOPS, mean ${f.lat_mean_us} µs` : (entry.result?.note ?? entry.note)}` +
          (entry.origin ? `; origin ${entry.origin.requests} requests, ${entry.origin.bytes} bytes` : ''),
      );
    }
  }

  // Every warm start of nbd-cow on the URL found its blocks in the cache: the origin saw the
  // start's probe (one request for the first byte) and nothing else.
  const warmOrigin = settings.warm_workloads.flatMap((w) =>
    (warm[w]?.remote ?? []).map((m, round) => {
      const o = m.origin;
      return {
        workload: w,
        round: round + 1,
        requests: o?.requests ?? null,
        bytes: o?.bytes ?? null,
        statuses: o?.other_statuses ?? null,
      };
    }),
  );
  const probeOnly = settings.warm_workloads.every((w) => {
    const starts = warm[w]?.remote ?? [];
    return (
      starts.length > 0 &&
      starts.every(({ origin: o }) => o !== undefined && o.requests === 1 && o.probe_requests === 1 && o.bytes <= 1)
    );
  });
  const baseUnchanged = sha256(BASE) === baseSum;

  // The URL's ratio per column: the median of its rounds' ratios, each to the local file's cell
  // of the same round; nbdkit's (one round): to the local file's median.
  const ratios: Record<string, Record<string, number | null>> = { 'nbd-cow URL ÷ local': {}, 'nbdkit-curl-cache ÷ local': {} };
  const roundRatios: Record<string, Array<number | null>> = {};
  for (const w of settings.warm_workloads) {
    const locals = warm[w]?.local ?? [];
    const pairs = (warm[w]?.remote ?? []).map((m, round) => ratio(warmValue(m, w), warmValue(locals[round], w)));
    roundRatios[w] = pairs;
    (ratios['nbd-cow URL ÷ local'] as Record<string, number | null>)[w] = median(pairs);
    (ratios['nbdkit-curl-cache ÷ local'] as Record<string, number | null>)[w] = ratio(
      median((warm[w]?.nbdkit ?? []).map((m) => warmValue(m, w))),
      median(locals.map((m) => warmValue(m, w))),
    );
  }

  const result = {
    date: new Date().toISOString(),
    settings: { ...settings, results: undefined },
    host: {
      cpus: os.cpus().length,
      mem_gib: Math.round(os.totalmem() / 2 ** 30),
      kernel: os.release(),
      loadavg_start: os.loadavg().map((x) => x.toFixed(2)),
      node: process.version,
      nbdkit: toolVersion('nbdkit', ['--version']),
      nginx: toolVersion(nginxBinary() ?? 'nginx', ['-v']),
      fio: toolVersion('fio', ['--version']),
      nbdcopy: toolVersion('nbdcopy', ['--version']),
    },
    base: { size_bytes: SIZE, method, sha256: baseSum, unchanged: baseUnchanged },
    servers: NAMES,
    cold_full_read: coldRead,
    prefetch,
    cold_clients: { workload: settings.cold_workload, fio: FIO_WORKLOADS[settings.cold_workload], servers: coldMany },
    warm: {
      rounds: settings.warm_rounds,
      servers: warm,
      ratios,
      round_ratios: roundRatios,
      remote_origin: warmOrigin,
      remote_probe_only: probeOnly,
    },
    wall_s: round((performance.now() - T0) / 1000, 1),
  };
  mkdirSync(dirname(settings.results), { recursive: true });
  writeFileSync(settings.results, `${JSON.stringify(result, null, 2)}\n`);

  // ---------------------------------------------------------------- the tables
  const out: string[] = [];
  out.push(
    `Remote base: ${settings.base_mb} MiB, nginx on 127.0.0.1; fio ${settings.runtime} s (+${settings.ramp} s ramp); ` +
      `${os.cpus().length} CPUs, load ${os.loadavg()[0]?.toFixed(2)} at the end`,
    '',
    '1. Cold, first full read (`nbdcopy URI null:`; nbd-cow on the URL with an empty --cache-dir)',
    '',
    '| server | seconds | MiB/s | connections | server CPU s | origin requests | origin MiB | sent twice |',
    '|---|---|---|---|---|---|---|---|',
  );
  for (const kind of kinds) {
    const m = coldRead[kind];
    const r = m?.result;
    out.push(
      m?.status === 'ok' && r
        ? `| ${NAMES[kind]} | ${r.seconds.toFixed(2)} | ${num(r.MiB_per_s)} | ${r.connections_seen ?? '–'} | ${num(m.server_cpu_s, 1)} | ${originCells(m.origin).join(' | ')} |`
        : `| ${NAMES[kind]} | FAIL | | | | | | |`,
    );
  }
  const pf = prefetch.result;
  out.push(
    '',
    pf
      ? `Prefetch of the warm cache: ${pf.seconds} s after start ("${pf.line.replace(/^.*?(prefetch of)/, '$1').replace(nginx.url('base.raw'), 'URL')}"), ` +
          `origin ${mib(prefetch.origin?.bytes)} MiB in ${prefetch.origin?.requests ?? '–'} requests, sent twice ${bytesText(prefetch.origin?.duplicate_bytes)}`
      : `Prefetch of the warm cache: FAIL (${prefetch.note})`,
    '',
    `2. Cold, ${FIO_WORKLOADS[settings.cold_workload]?.numjobs} clients at once (fio ${settings.cold_workload}: randread, ` +
      `bssplit ${FIO_WORKLOADS[settings.cold_workload]?.bs}, QD ${FIO_WORKLOADS[settings.cold_workload]?.iodepth} each; empty cache)`,
    '',
    '| server | MiB/s | mean / p99 µs | server CPU s | origin requests | origin MiB | sent twice | fetched MiB (metrics) | distinct read MiB (metrics) |',
    '|---|---|---|---|---|---|---|---|---|',
  );
  for (const kind of kinds) {
    const m = coldMany[kind];
    const f = m?.result?.fio;
    out.push(
      m?.status === 'ok' && m.result?.status === 'ok' && f
        ? `| ${NAMES[kind]} | ${num(f.MiB_per_s)} | ${num(f.lat_mean_us)} / ${num(f.lat_p99_us)} | ${num(m.server_cpu_s, 1)} | ` +
            `${originCells(m.origin).join(' | ')} | ${mib(m.metrics?.fetched_bytes)} | ${mib(m.metrics?.distinct_read_bytes)} |`
        : `| ${NAMES[kind]} | FAIL | | | | | | | |`,
    );
  }
  out.push(
    '',
    `3. Warm (a fresh server per cell; nbd-cow on the URL: the cache --prefetch filled; nbdkit: one nbdcopy pass first). ` +
      `Cells: throughput (mean / p99 µs), the median of ${settings.warm_rounds} round(s) (nbdkit: 1); ` +
      "the URL's ratio is the median of its rounds' ratios to the local file, [lowest–highest]",
    '',
    `| server | ${settings.warm_workloads.join(' | ')} |`,
    `|---|${settings.warm_workloads.map(() => '---').join('|')}|`,
  );
  for (const kind of kinds) {
    out.push(`| ${NAMES[kind]} | ${settings.warm_workloads.map((w) => warmCell(warm[w]?.[kind], w)).join(' | ')} |`);
  }
  for (const [name, row] of Object.entries(ratios)) {
    if (name.startsWith('nbdkit') && !nbdkitOk) continue;
    const spread = (w: string): string => {
      const known = name.startsWith('nbd-cow') ? (roundRatios[w] ?? []).filter((r): r is number => r !== null) : [];
      return known.length > 1 ? ` [${Math.min(...known).toFixed(2)}–${Math.max(...known).toFixed(2)}]` : '';
    };
    out.push(
      `| ${name} | ${settings.warm_workloads.map((w) => (row[w] == null ? '–' : `${row[w]?.toFixed(2)}×${spread(w)}`)).join(' | ')} |`,
    );
  }
  const remoteRatios = Object.values(ratios['nbd-cow URL ÷ local'] ?? {});
  const low = settings.warm_workloads
    .filter((w) => (ratios['nbd-cow URL ÷ local']?.[w] ?? 0) < 0.9)
    .map((w) => `${w} ${ratios['nbd-cow URL ÷ local']?.[w]?.toFixed(3) ?? 'FAIL'}×`);
  const seenByWarm = new Set(warmOrigin.map((o) => `${o.requests ?? '?'} request(s), ${o.bytes ?? '?'} B`));
  out.push(
    '',
    `nbd-cow on the URL, ${warmOrigin.length} warm starts: the origin saw ` +
      `${seenByWarm.size === 1 ? `${[...seenByWarm][0]} each` : warmOrigin.map((o) => `${o.workload} #${o.round}: ${o.requests ?? '?'} request(s), ${o.bytes ?? '?'} B`).join('; ')} ` +
      `(${probeOnly ? 'the probe only: ok' : 'MORE THAN THE PROBE'}).`,
    `Goal ≥ 0.9× local in every warm column: ${remoteRatios.length > 0 && low.length === 0 ? 'met' : `not met (${low.join(', ')})`}; ` +
      `goal 0 bytes sent twice for nbd-cow with ${FIO_WORKLOADS[settings.cold_workload]?.numjobs} clients: ` +
      `${coldMany.remote?.origin?.duplicate_bytes === 0 ? 'met' : `not met (${bytesText(coldMany.remote?.origin?.duplicate_bytes)})`}.`,
    `Base ${baseUnchanged ? 'unchanged' : 'CHANGED'}; ${Math.round((performance.now() - T0) / 1000)} s in all; JSON: ${settings.results}`,
    '',
  );
  process.stdout.write(out.join('\n'));
  const failed = [
    ...Object.values(coldRead),
    prefetch,
    ...Object.values(coldMany),
    ...Object.values(warm).flatMap((r) => Object.values(r).flat()),
  ].some((m) => m?.status !== 'ok' || (m.result as FioEntry | undefined)?.status === 'fail');
  if (!baseUnchanged || !probeOnly) return 2;
  return failed ? 1 : 0;
}

main().then(
  (code) => cleanupAndExit(code),
  (err: unknown) => internalError(err),
);
