// The run: FUZZ_STREAMS streams in batches of FUZZ_BATCH, FUZZ_CONCURRENCY at a time, each
// planned from (seed, index); after each batch the server is checked at rest (server-watch.ts).
// A batch that overruns its time limit is a failure naming the streams still running.

import type { ProbeTimings } from './probe.js';
import { log, progressLine } from './report.js';
import type { ServerWatch } from './server-watch.js';
import type { Settings } from './settings.js';
import type { PlanContext } from './stream-classes.js';
import { planStream } from './stream-plan.js';
import { runStream, type StreamResult, type Target } from './stream-runner.js';
import type { Tally } from './tally.js';

export interface Campaign {
  readonly settings: Settings;
  readonly planContext: PlanContext;
  readonly timings: ProbeTimings;
  readonly tls: Target['tls'];
  readonly watch: ServerWatch;
  readonly tally: Tally;
  /** Set by a signal: no new streams start. */
  readonly interrupted: () => boolean;
}

async function runOne(campaign: Campaign, index: number): Promise<StreamResult> {
  const { settings, watch } = campaign;
  const plan = planStream(settings.seed, index, campaign.planContext);
  const target: Target = { address: { kind: 'tcp', host: '127.0.0.1', port: watch.port }, tls: campaign.tls };
  watch.started(plan.key);
  const result = await runStream(plan, target, campaign.timings, settings.streamDeadlineMs, (port) =>
    watch.connected(plan.key, port),
  );
  watch.ended(plan.key);
  // A stream that fails because the server is gone is not a finding of its own: the crash is.
  return result.problem !== null && watch.down ? { ...result, problem: null } : result;
}

/** Streams [start, end) with `concurrency` at once; false when the batch overran its limit. */
async function runBatch(campaign: Campaign, start: number, end: number): Promise<boolean> {
  const { settings, watch } = campaign;
  let next = start;
  // Once the batch has overrun, streams still running are failures already; what they report later is not counted.
  let overran = false;
  const worker = async (): Promise<void> => {
    while (next < end && !overran && !watch.down && !campaign.interrupted()) {
      const result = await runOne(campaign, next++);
      if (!overran) campaign.tally.add(result);
    }
  };
  const pool = Promise.all(Array.from({ length: Math.min(settings.concurrency, end - start) }, worker));
  let timer: NodeJS.Timeout | undefined;
  const overrun = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), settings.batchTimeoutMs);
  });
  const finished = await Promise.race([pool.then(() => true), overrun]);
  clearTimeout(timer);
  if (!finished) {
    overran = true;
    const running = watch.inFlight();
    campaign.tally.fail(
      null,
      `batch ${start}–${end} did not finish within ${settings.batchTimeoutMs / 1000} s; ${running.length} streams still running`,
    );
    for (const key of running) campaign.tally.fail(key, 'still running when its batch overran');
  }
  return finished;
}

/** Run every batch and its checks; stops early on an overrun, repeated crashes or a signal. */
export async function runCampaign(campaign: Campaign): Promise<void> {
  const { settings, tally, watch } = campaign;
  const started = Date.now();
  for (let start = 0; start < settings.streams && !campaign.interrupted(); start += settings.batch) {
    const end = Math.min(settings.streams, start + settings.batch);
    const finished = await runBatch(campaign, start, end);
    if (campaign.interrupted()) return;
    const goOn = finished && (await watch.rest());
    log(progressLine(tally, settings.streams, (Date.now() - started) / 1000));
    if (!goOn) {
      log('stopping the run early (see the failures)');
      return;
    }
  }
}
