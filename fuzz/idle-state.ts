// The server at rest between batches, from /proc and its overlay directory: once every stream
// is closed its open files must settle back, no throwaway overlay (eph-*.cow) or lock file may be
// left, and its RSS is sampled (the lowest of a few samples, so one GC pause does not count).

import { readdirSync } from 'node:fs';
import { openFdCount, sleep, statusKiB } from '../bench/lib/proc.js';

export interface IdleState {
  readonly rssKiB: number;
  readonly fds: number;
  /** Throwaway overlays and lock files still in the overlay directory after the settle time. */
  readonly leftovers: readonly string[];
  /** How long it took to settle (or the limit). */
  readonly settleMs: number;
}

const POLL_MS = 100;
const STABLE_POLLS = 3;
const RSS_SAMPLES = 3;

function leftoverFiles(overlayDir: string): string[] {
  try {
    return readdirSync(overlayDir).filter((name) => name.startsWith('eph-') || name.endsWith('.lock'));
  } catch {
    return [];
  }
}

/** Wait (at most `limitMs`) for the server to settle, then sample it. */
export async function idleState(pid: number, overlayDir: string, limitMs: number): Promise<IdleState> {
  const started = Date.now();
  let stable = 0;
  let lastFds = openFdCount(pid);
  while (Date.now() - started < limitMs) {
    await sleep(POLL_MS);
    const fds = openFdCount(pid);
    stable = fds === lastFds ? stable + 1 : 0;
    lastFds = fds;
    if (stable >= STABLE_POLLS && leftoverFiles(overlayDir).length === 0) break;
  }
  const settleMs = Date.now() - started;
  let rssKiB = Number.POSITIVE_INFINITY;
  for (let i = 0; i < RSS_SAMPLES; i++) {
    rssKiB = Math.min(rssKiB, statusKiB(pid, 'VmRSS') ?? Number.POSITIVE_INFINITY);
    await sleep(POLL_MS);
  }
  return { rssKiB, fds: openFdCount(pid) ?? -1, leftovers: leftoverFiles(overlayDir), settleMs };
}
