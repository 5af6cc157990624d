// Do the limits hold against hostile clients? Per case (none; stalled handshakes; half-sent
// options; clients that never read their READ replies; all three) a fresh server on a random
// base: its RSS every 100 ms, a normal client's service, and which hostile connections it dropped.

import { closeSync, mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { makeBase, sha256, warmBase } from './lib/base-image.js';
import { HOSTILE_KINDS, type HostileClient, type HostileKind, openHostile } from './lib/hostile-clients.js';
import { type CaseResult, mib, type OpenSummary, renderTable } from './lib/hostile-report.js';
import { type ServerUnderTest, startServerUnderTest, stopServerUnderTest } from './lib/hostile-server.js';
import { die, envNumber, log } from './lib/log.js';
import { NbdinfoProbe } from './lib/nbdinfo-probe.js';
import { NormalReader } from './lib/normal-reader.js';
import { sleep, statusKiB, tail } from './lib/proc.js';
import { type LimitReason, ServerWatch } from './lib/server-watch.js';
import { heldSockets } from './lib/tcp-peers.js';
import { errorText, round } from './lib/workloads.js';

// This file runs as dist/bench/hostile.js: the checkout is two levels up.
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

const CASES: Readonly<Record<string, readonly HostileKind[]>> = {
  baseline: [],
  'stalled-handshake': ['stalled-handshake'],
  'half-option': ['half-option'],
  'non-reader': ['non-reader'],
  all: HOSTILE_KINDS,
};

const words = (s: string | undefined): string[] => (s ?? '').split(/\s+/).filter((w) => w !== '');

const env = process.env;
const settings = {
  server_command: words(env['HOSTILE_SERVER_CMD']).length
    ? words(env['HOSTILE_SERVER_CMD'])
    : [process.execPath, join(ROOT, 'dist', 'bin', 'nbd-cow.js')],
  server_args: words(env['HOSTILE_SERVER_ARGS']),
  cases: words(env['HOSTILE_CASES'] ?? Object.keys(CASES).join(' ')),
  count: Math.floor(envNumber('HOSTILE_COUNT', 100)),
  seconds: envNumber('HOSTILE_SECONDS', 20),
  rss_cap_mib: envNumber('HOSTILE_RSS_CAP_MIB', 6144),
  base_mb: Math.floor(envNumber('BASE_MB', 1024)),
  results: env['HOSTILE_RESULTS'] || join(ROOT, 'bench', 'results', 'hostile-latest.json'),
  keep_tmp: env['KEEP_TMP'] === '1',
};
for (const c of settings.cases)
  if (CASES[c] === undefined) die(`HOSTILE_CASES: unknown case '${c}' (${Object.keys(CASES).join(', ')})`);

const WORK = mkdtempSync(join(os.tmpdir(), 'nbd-cow-hostile-'));
const BASE = join(WORK, 'base.raw');
const SIZE = settings.base_mb * 1024 * 1024;

/** The server and hostile clients of the case running now, for a signal to clean up. */
let current: { srv: ServerUnderTest | null; clients: HostileClient[] } = { srv: null, clients: [] };

for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
  process.once(sig, () => {
    log(`${sig}: stopping`);
    for (const c of current.clients) c.client.destroy();
    const srv = current.srv;
    void (srv === null ? Promise.resolve(false) : stopServerUnderTest(srv, 1000)).finally(() => {
      if (!settings.keep_tmp) rmSync(WORK, { recursive: true, force: true });
      process.exit(130);
    });
  });
}

/** Lines of the server log that report a dropped or timed-out connection. */
function logDropLines(file: string): number {
  try {
    return readFileSync(file, 'utf8')
      .split('\n')
      .filter((l) => /dropped|no export chosen|timed out/i.test(l)).length;
  } catch {
    return 0;
  }
}

const failed = (name: string, note: string): CaseResult => ({
  name,
  hostile: CASES[name] ?? [],
  status: 'failed',
  note,
  seconds: null,
  server: null,
  open: {},
  dropped: {},
  normal: null,
  nbdinfo: null,
  timeline: [],
});

async function runCase(index: number, name: string, baseFd: number): Promise<CaseResult> {
  const kinds = CASES[name] ?? [];
  const run = join(WORK, `case-${index}-${name}`);
  mkdirSync(run);
  warmBase(BASE);
  let srv: ServerUnderTest;
  try {
    srv = await startServerUnderTest({
      command: settings.server_command,
      extraArgs: settings.server_args,
      base: BASE,
      size: SIZE,
      run,
      readyTimeoutMs: 20_000,
    });
  } catch (err) {
    return failed(name, `server did not start: ${errorText(err)}`);
  }
  const clients: HostileClient[] = [];
  current = { srv, clients };
  let caseOver = false;
  let reachLimit: (reason: LimitReason) => void = () => undefined;
  const limitReached = new Promise<LimitReason>((r) => {
    reachLimit = r;
  });
  const t0 = performance.now();
  const watch = new ServerWatch(srv.pid, srv.port, t0, settings.rss_cap_mib * 1024, reachLimit);
  const rssStart = statusKiB(srv.pid, 'VmRSS');
  const socketsStart = heldSockets(srv.pid, srv.port)?.sockets ?? null;
  watch.start();
  const reader = new NormalReader({
    address: srv.address,
    exportName: srv.exportName,
    baseFd,
    size: SIZE,
    timeoutMs: (settings.seconds + 30) * 1000,
  });
  reader.start();
  const probe = new NbdinfoProbe(srv.uri, SIZE);
  probe.start();
  const target = { address: srv.address, exportName: srv.exportName, size: SIZE, t0 };
  const onOpen = (c: HostileClient): void => {
    if (caseOver) c.client.destroy();
    else {
      clients.push(c);
      watch.track(c);
    }
  };
  const open: Partial<Record<HostileKind, OpenSummary>> = {};
  const opening = Promise.all(
    kinds.map(async (kind) => {
      const r = await openHostile(kind, settings.count, target, onOpen);
      open[kind] = { opened: r.clients.length, errors: r.errors, first_error: r.firstError };
      log(`  ${kind}: ${r.clients.length} open at ${((performance.now() - t0) / 1000).toFixed(1)} s, ${r.errors} failed`);
    }),
  );

  const early = await Promise.race([sleep(settings.seconds * 1000).then(() => null), limitReached]);
  const endS = (performance.now() - t0) / 1000;
  // Both stop measuring at once (the rest of their work is waiting for what is still running).
  const normalDone = reader.stop();
  const probeDone = probe.stop();
  if (early === 'rss-cap') {
    log(`  RSS passed ${settings.rss_cap_mib} MiB at ${endS.toFixed(1)} s: killing the server (pid ${srv.pid})`);
    watch.stop();
    await stopServerUnderTest(srv, 0);
  } else {
    watch.sample();
    watch.stop();
  }
  if (early === 'died') log(`  the server died at ${endS.toFixed(1)} s: ${tail(srv.logFile)}`);
  const rssEnd = statusKiB(srv.pid, 'VmRSS');
  const hwm = statusKiB(srv.pid, 'VmHWM');
  const socketsEnd = heldSockets(srv.pid, srv.port)?.sockets ?? null;
  const survived = early === null && rssEnd !== null;
  caseOver = true;
  const normal = await normalDone;
  const nbdinfo = await probeDone;
  await Promise.race([opening, sleep(5000)]);
  for (const c of clients) c.client.destroy();
  if (early === null) await stopServerUnderTest(srv, 5000);
  current = { srv: null, clients: [] };

  const dropped = Object.fromEntries(kinds.map((k) => [k, watch.drops(k)]));
  const socketsMax = watch.samples.reduce((m, s) => Math.max(m, s[3]), 0);
  return {
    name,
    hostile: kinds,
    status: early === null ? 'ok' : 'stopped',
    note: early === null ? null : early === 'died' ? 'the server died' : `RSS passed ${settings.rss_cap_mib} MiB`,
    seconds: round(endS, 1),
    server: {
      survived,
      stopped_early: early,
      stopped_at_s: early === null ? null : round(endS, 1),
      rss_start_kib: rssStart,
      rss_max_sampled_kib: watch.rssMaxKiB,
      vm_hwm_kib: hwm,
      rss_end_kib: rssEnd ?? (early === 'rss-cap' ? (watch.samples[watch.samples.length - 1]?.[1] ?? null) : null),
      sockets_start: socketsStart,
      sockets_max: socketsMax,
      sockets_end: socketsEnd,
      log_drop_lines: logDropLines(srv.logFile),
      log_tail: tail(srv.logFile),
    },
    open,
    dropped,
    normal,
    nbdinfo,
    timeline: watch.samples,
  };
}

async function main(): Promise<void> {
  const t0 = performance.now();
  log(`server: ${[...settings.server_command, ...settings.server_args].join(' ')}`);
  log(`making a ${settings.base_mb} MiB base in ${WORK}`);
  const method = makeBase(BASE, SIZE);
  const hashBefore = sha256(BASE);
  const baseFd = openSync(BASE, 'r');
  const cases: CaseResult[] = [];
  for (const [i, name] of settings.cases.entries()) {
    log(`case ${name}: ${settings.count} of each hostile kind, ${settings.seconds} s`);
    const r = await runCase(i + 1, name, baseFd);
    const n = r.normal;
    log(
      `  ${r.status}${r.note ? ` (${r.note})` : ''}: RSS max ${mib(Math.max(r.server?.vm_hwm_kib ?? 0, r.server?.rss_max_sampled_kib ?? 0))}, end ${mib(r.server?.rss_end_kib)}; ` +
        `normal ${n?.reads ?? 0} reads, p99 ${n?.lat_p99_ms ?? '–'} ms; nbdinfo ${r.nbdinfo?.ok ?? 0}/${r.nbdinfo?.total ?? 0}`,
    );
    cases.push(r);
  }
  closeSync(baseFd);
  const unchanged = sha256(BASE) === hashBefore;
  const results = {
    schema: 1,
    generated: `${new Date().toISOString().slice(0, 16)}Z`,
    host: { cpus: os.cpus().length, mem_gib: Math.round(os.totalmem() / 2 ** 30), kernel: os.release() },
    settings: { ...settings, server_command: settings.server_command.join(' ') },
    base: { size_bytes: SIZE, method, sha256: hashBefore, unchanged },
    wall_s: round((performance.now() - t0) / 1000, 1),
    cases,
  };
  mkdirSync(dirname(settings.results), { recursive: true });
  writeFileSync(settings.results, `${JSON.stringify(results, null, 1)}\n`);
  process.stdout.write(`${renderTable(cases)}\n`);
  if (!unchanged) log('error: the base image CHANGED');
  log(`wrote ${settings.results} in ${results.wall_s} s`);
  if (!settings.keep_tmp) rmSync(WORK, { recursive: true, force: true });
  process.exit(unchanged ? 0 : 2);
}

main().catch((err: unknown) => {
  log(`internal error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
  for (const c of current.clients) c.client.destroy();
  const srv = current.srv;
  void (srv === null ? Promise.resolve(false) : stopServerUnderTest(srv, 1000)).finally(() => {
    if (!settings.keep_tmp) rmSync(WORK, { recursive: true, force: true });
    process.exit(3);
  });
});
