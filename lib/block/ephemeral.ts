// Names of per-connection (ephemeral) overlay files and the start-up sweep of leftovers.
// A file is `eph-<pid>-<n>.cow`: <pid> is the server process that made it, <n> a counter the
// server keeps. A server that died without closing its connections leaves such files behind;
// at start the next server removes those whose pid no longer exists (kill(pid, 0) -> ESRCH).
// A recycled pid keeps its files until that process is gone too: harmless, and never wrong.

import { join } from 'node:path';
import { processExists } from './process-alive.js';
import { listDirectory, unlinkFile } from './syscalls.js';

const EPHEMERAL_NAME = /^eph-(\d+)-(\d+)\.cow$/;

/** The file name of ephemeral overlay number `n` of process `pid`. */
export function ephemeralOverlayName(pid: number, n: number): string {
  return `eph-${pid}-${n}.cow`;
}

/** The owning pid of an ephemeral overlay file name, or undefined for any other name. */
export function ephemeralOverlayPid(name: string): number | undefined {
  const m = EPHEMERAL_NAME.exec(name);
  return m ? Number(m[1]) : undefined;
}

/** Delete ephemeral overlays in `dir` whose process is dead; returns how many were removed. */
export async function sweepEphemeralOverlays(dir: string): Promise<number> {
  let removed = 0;
  for (const name of await listDirectory(dir)) {
    const pid = ephemeralOverlayPid(name);
    if (pid === undefined || pid <= 0 || pid === process.pid || processExists(pid)) continue;
    try {
      await unlinkFile(join(dir, name));
      removed++;
    } catch (err) {
      // Another server sweeping the same directory got there first.
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }
  return removed;
}
