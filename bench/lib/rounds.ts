// ROUNDS=N: every workload runs N times for every server, the servers in turn within each round,
// and each cell keeps its median round by the workload's headline metric (report.ts). On this
// kind of host one run of a 10 s workload moves by 30 %; the median of three, taken in
// alternation with the anchors, moves much less, so a column's ratio says more.

import { headline } from './report.js';
import type { WorkloadEntry } from './results.js';

/**
 * The entry of `w` to report from one server's rounds (in the order they ran): the median ok
 * round by the headline metric (of an even count, the lower-middle one, i.e. the worse), carrying
 * every ok round's value in `round_values`. No ok round: the last one. One round: itself.
 */
export function medianRound(w: string, rounds: readonly WorkloadEntry[]): WorkloadEntry {
  const last = rounds.at(-1);
  if (last === undefined) throw new Error(`no round of ${w}`);
  if (rounds.length === 1) return last;
  const h = headline(w);
  const ok = rounds.filter((r) => r.status === 'ok' && (h === null || typeof r[h.key] === 'number'));
  if (ok.length === 0) return { ...last, note: note(last.note, `all ${rounds.length} rounds failed`) };
  if (h === null) return ok[0] as WorkloadEntry;
  const value = (r: WorkloadEntry): number => r[h.key] as number;
  // Best first, so that the lower middle of an even count is the worse of the two middles.
  const ranked = [...ok].sort((a, b) => (h.lowerBetter ? value(a) - value(b) : value(b) - value(a)));
  const median = ranked[Math.floor(ranked.length / 2)] as WorkloadEntry;
  const failed = rounds.length - ok.length;
  return {
    ...median,
    round_values: ok.map(value),
    ...(failed > 0 ? { note: note(median.note, `${failed} of ${rounds.length} rounds failed`) } : {}),
  };
}

const note = (a: string | undefined, b: string): string => (a ? `${a}; ${b}` : b);
