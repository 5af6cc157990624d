// `make fuzz`: hostile input at scale against a live nbd-cow (fuzz/README.md). Sets up a pattern
// base, a PSK and the server, runs the campaign (or FUZZ_REPLAY's streams), prints the summary,
// stops the server by PID and exits 0 only when nothing failed.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { makePatternBase, sha256File } from '../test/helpers/bases.js';
import { type Campaign, runCampaign } from './campaign.js';
import { captureHellos } from './client-hello.js';
import { loadRecordings } from './corpus.js';
import { makePsk, pskClientOptions } from './psk.js';
import { missingClients } from './real-clients.js';
import { runReplay } from './replay.js';
import { log, printSummary } from './report.js';
import { RssJudge } from './rss-judge.js';
import { ServerWatch } from './server-watch.js';
import { readSettings } from './settings.js';
import { Tally } from './tally.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
/** The recordings were made against this export: `pattern.img`, 4 MiB (fixtures/README.md). */
const EXPORT_NAME = 'pattern';
const EXPORT_SIZE = 4 * 1024 * 1024;
/** RSS samples at rest that count as warm-up: a tenth of the run, at least two. */
const WARMUP_SHARE = 0.1;

async function main(): Promise<number> {
  const settings = readSettings(process.env);
  const missing = missingClients();
  if (missing.length > 0) {
    log(`error: the real-client checks need ${missing.join(', ')} (make deps-test installs them)`);
    return 2;
  }
  const runDir = mkdtempSync(join(tmpdir(), 'nbd-cow-fuzz-'));
  const base = await makePatternBase(runDir, EXPORT_SIZE, `${EXPORT_NAME}.img`);
  const baseHash = await sha256File(base);
  const psk = makePsk(runDir);
  const tls = pskClientOptions(psk);
  const planContext = {
    recordings: loadRecordings(join(ROOT, 'fixtures', 'transcripts')),
    hellos: await captureHellos(psk),
    exportName: EXPORT_NAME,
    exportSize: EXPORT_SIZE,
  };
  const batches = Math.ceil(settings.streams / settings.batch);
  const judge = new RssJudge(settings.rssGrowthMiB, Math.max(2, Math.ceil(batches * WARMUP_SHARE)));
  const tally = new Tally();
  const logFile = join(runDir, 'server.log');
  const serve = {
    cli: join(ROOT, 'dist', 'bin', 'nbd-cow.js'),
    base,
    overlayDir: join(runDir, 'overlays'),
    pskFile: psk.file,
    handshakeTimeoutS: settings.handshakeTimeoutS,
    logLevel: settings.serverLog,
    logFile,
  };
  const client = { exportName: EXPORT_NAME, exportSize: EXPORT_SIZE, base, pskIdentity: psk.identity, pskFile: psk.file };
  const seedNote = settings.seedDrawn ? ' (drawn at random; FUZZ_SEED repeats it)' : '';
  log(`seed ${settings.seed}${seedNote}; run directory ${runDir}`);
  log(`${settings.streams} streams, ${settings.concurrency} at once, checks every ${settings.batch}`);

  const watch = await ServerWatch.start(serve, client, tally, judge);
  let interrupted = false;
  const onSignal = (): void => {
    if (interrupted) process.exit(130);
    interrupted = true;
    log('interrupted: finishing the streams in flight (again to quit at once)');
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('exit', () => {
    if (!watch.down) process.kill(watch.pid, 'SIGKILL');
  });

  const timings = {
    greetingMs: 5000,
    quietMs: 20,
    windowMs: 300,
    closeWaitMs: 250,
    dropWaitMs: settings.handshakeTimeoutS * 1000 + 3000,
  };
  const campaign: Campaign = { settings, planContext, timings, tls, watch, tally, interrupted: () => interrupted };
  const started = Date.now();
  if (settings.replay.length > 0) await runReplay(campaign, settings.replay, runDir);
  else await runCampaign(campaign);
  const elapsedS = (Date.now() - started) / 1000;
  await watch.stop();
  if ((await sha256File(base)) !== baseHash) tally.fail(null, `the base image ${base} was written to`);

  printSummary(tally, judge.summary(), watch.logCounts(), settings.seed, elapsedS);
  const clean = tally.failureCount === 0 && !interrupted;
  if (clean && !settings.keep && settings.replay.length === 0) rmSync(runDir, { recursive: true, force: true });
  else log(`kept ${runDir} (server.log, overlays${settings.replay.length > 0 ? ', replay-*.bin' : ''})`);
  return interrupted ? 130 : clean ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    log(`error: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
    process.exit(2);
  },
);
