// FUZZ_REPLAY=seed:index[,…]: the named streams alone, rebuilt from their keys, against a fresh
// server, then the same checks as after a batch. Each stream's plan is printed and its bytes are
// written to the run directory (replay-SEED-INDEX.bin), ready to become a test fixture.

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import type { Campaign } from './campaign.js';
import { log } from './report.js';
import type { ReplayKey } from './settings.js';
import { planStream, type StreamPlan } from './stream-plan.js';
import { runStream } from './stream-runner.js';

const HEX_SHOWN = 512;

function describe(plan: StreamPlan): string {
  const pieces = plan.pieces.length > 12 ? `${plan.pieces.slice(0, 12).join(',')},…` : plan.pieces.join(',');
  const hex = plan.bytes
    .subarray(0, HEX_SHOWN)
    .toString('hex')
    .replace(/(.{64})/g, '$1\n    ');
  return [
    `stream ${plan.key}: class ${plan.streamClass}, transport ${plan.transport}, from ${plan.recording}`,
    `  mutations: ${plan.ops.join(', ')}`,
    `  ${plan.bytes.length} bytes in ${plan.pieces.length} pieces (${pieces}), gap ${plan.gap}, ending ${plan.ending}` +
      (plan.ending === 'abort' ? ` after ${plan.abortAfter} pieces` : ''),
    `  bytes${plan.bytes.length > HEX_SHOWN ? ` (first ${HEX_SHOWN})` : ''}:\n    ${hex}`,
  ].join('\n');
}

/** Replay `keys` one after another; failures go to the campaign's tally. */
export async function runReplay(campaign: Campaign, keys: readonly ReplayKey[], runDir: string): Promise<void> {
  const { watch, tally } = campaign;
  for (const { seed, index } of keys) {
    const plan = planStream(seed, index, campaign.planContext);
    const file = join(runDir, `replay-${seed}-${index}.bin`);
    writeFileSync(file, plan.bytes);
    process.stdout.write(`${describe(plan)}\n  written to ${file}\n`);
    const target = { address: { kind: 'tcp' as const, host: '127.0.0.1', port: watch.port }, tls: campaign.tls };
    watch.started(plan.key);
    const result = await runStream(plan, target, campaign.timings, campaign.settings.streamDeadlineMs, (port) =>
      watch.connected(plan.key, port),
    );
    watch.ended(plan.key);
    tally.add(result);
    const outcome = `received ${result.received} bytes in ${result.ms} ms, server ${result.serverClosed ? 'closed first' : 'left open'}`;
    process.stdout.write(`  ${outcome}; ${result.problem === null ? 'no problem seen' : `PROBLEM: ${result.problem}`}\n`);
  }
  await sleep(500); // let the server log what the last stream did
  log('checking the server at rest');
  await watch.rest();
}
