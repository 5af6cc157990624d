// What the fuzzer prints: timestamped progress lines on stderr, and the summary at the end
// (streams, per-class counts, server RSS, real-client checks, failures with replay keys).

import type { RssSummary } from './rss-judge.js';
import type { LogCounts } from './server-under-test.js';
import type { Failure, Tally } from './tally.js';

export function log(message: string): void {
  const time = new Date().toISOString().slice(11, 19);
  process.stderr.write(`[fuzz ${time}] ${message}\n`);
}

const mib = (kib: number): string => `${(kib / 1024).toFixed(1)} MiB`;

function counts(map: ReadonlyMap<string, number>): string {
  return [...map.entries()]
    .sort((a, b) => b[1] - a[1])
    .map(([name, n]) => `${name} ${n}`)
    .join(', ');
}

export function progressLine(tally: Tally, total: number, elapsedS: number): string {
  const last = tally.rest[tally.rest.length - 1];
  const rate = elapsedS > 0 ? Math.round(tally.streams / elapsedS) : 0;
  const rest = last === undefined ? '' : `, server RSS ${mib(last.rssKiB)}, ${last.fds} fds`;
  return `${tally.streams}/${total} streams, ${rate}/s${rest}, clients ok ${tally.clientChecksPassed}, failures ${tally.failureCount}`;
}

function meanMs(tally: Tally): string {
  return [...tally.classes.entries()].map(([name, n]) => `${name} ${Math.round((tally.classMs.get(name) ?? 0) / n)}`).join(', ');
}

/** Failures grouped by what happened (numbers masked), each with its count and first replay keys. */
function groupedFailures(failures: readonly Failure[]): string[] {
  const groups = new Map<string, { what: string; keys: string[]; count: number }>();
  for (const failure of failures) {
    const kind = failure.what.replace(/\d+/g, 'N').slice(0, 160);
    const group = groups.get(kind) ?? { what: failure.what, keys: [], count: 0 };
    group.count++;
    if (failure.key !== null && group.keys.length < 5) group.keys.push(failure.key);
    groups.set(kind, group);
  }
  return [...groups.values()].map(
    (g) => `  ${g.count}× ${g.what}${g.keys.length > 0 ? `\n      replay: FUZZ_REPLAY=${g.keys.join(',')}` : ''}`,
  );
}

export function printSummary(tally: Tally, rss: RssSummary | null, logs: LogCounts, seed: number, elapsedS: number): void {
  const lines = [
    '',
    `== fuzz summary (seed ${seed}) ==`,
    `streams run: ${tally.streams} in ${elapsedS.toFixed(0)} s (${Math.round(tally.streams / Math.max(elapsedS, 1))}/s); sent ${mib(tally.bytesSent / 1024)}, received ${mib(tally.bytesReceived / 1024)}`,
    `classes: ${counts(tally.classes)}`,
    `mean ms per stream: ${meanMs(tally)}`,
    `mutations: ${counts(tally.ops)}`,
    `endings: ${counts(tally.endings)}`,
    `server did: ${counts(tally.outcomes) || 'nothing notable'}`,
    ...[...tally.outcomeKeys].map(([outcome, keys]) => `  e.g. ${outcome}: FUZZ_REPLAY=${keys.join(',')}`),
  ];
  if (rss !== null) {
    const baseline = rss.baselineKiB === null ? 'still warming up' : mib(rss.baselineKiB);
    const slope = rss.slopeMiBPer100k === null ? 'n/a' : `${rss.slopeMiBPer100k.toFixed(2)} MiB per 100k streams`;
    lines.push(
      `server RSS at rest: first ${mib(rss.firstKiB)}, last ${mib(rss.lastKiB)}, max ${mib(rss.maxKiB)}; warm-up highest ${baseline}, last floor ${mib(rss.floorKiB)}; trend ${slope}`,
    );
  }
  const fds = tally.rest.map((r) => r.fds);
  const own = tally.rest.map((r) => r.fuzzerFds);
  if (fds.length > 0) {
    lines.push(
      `open files at rest: server first ${fds[0]}, last ${fds[fds.length - 1]}, max ${Math.max(...fds)}; fuzzer first ${own[0]}, last ${own[own.length - 1]}`,
    );
  }
  if (logs.info + logs.suppressed > 0) {
    const share =
      logs.suppressed === 0
        ? ''
        : ` (${((100 * logs.suppressed) / (logs.info + logs.suppressed)).toFixed(1)} %: a warning among them went unseen)`;
    lines.push(`server log: ${logs.info} info lines; ${logs.suppressed} suppressed by its rate limit${share}`);
  }
  lines.push(`real-client checks: ${tally.clientChecksPassed} passed, ${tally.clientChecksFailed} failed`);
  if (tally.failureCount === 0) lines.push('failures: none');
  else lines.push(`failures: ${tally.failureCount}`, ...groupedFailures(tally.failures));
  process.stdout.write(`${lines.join('\n')}\n`);
}
