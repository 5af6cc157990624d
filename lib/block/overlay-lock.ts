// Cross-process lock on a named overlay: a lock file next to it holding the owner's pid,
// created atomically (written under a temporary name, then link(2), which fails with EEXIST if
// the lock exists). Two server processes on one overlay directory thus never open the same
// named overlay at once; inside one process the named-overlay registry shares one device and
// takes the lock once, with at most one open in flight per name (a second acquire here would
// take our own pid's lock over as stale, see below).
//
// A lock is stale when its pid no longer exists (kill(pid, 0) -> ESRCH), when it is our own pid
// but this process does not hold it (a previous server with a recycled pid, common in
// containers), or when it holds no pid. Locks this process holds are remembered, so two servers
// started in one process on one overlay directory refuse each other like two processes do. A stale lock is removed and taking it is retried
// once. Removal re-reads the file first; two processes taking over the same stale lock in the
// same instant could still race, which needs a crashed server and two new ones starting at once.

import { resolve } from 'node:path';
import { createWithContent, readText, removeFile } from './control-file.js';
import { processExists } from './process-alive.js';

export interface OverlayLock {
  readonly path: string;
  /** Remove the lock file. Idempotent. */
  release(): Promise<void>;
}

export interface LockHolder {
  readonly pid: number | undefined;
  /** Whether the holder still runs: a live process, or this one holding it now. */
  readonly alive: boolean;
}

function parsePid(text: string): number | undefined {
  const match = /^(\d+)\s*$/.exec(text);
  const pid = match ? Number(match[1]) : NaN;
  return Number.isSafeInteger(pid) && pid > 0 ? pid : undefined;
}

/** Absolute paths of the lock files this process holds. */
const heldHere = new Set<string>();

/** Who holds the lock at `lockPath`, or undefined when there is no lock file. */
export async function lockHolder(lockPath: string): Promise<LockHolder | undefined> {
  const text = await readText(lockPath);
  if (text === undefined) return undefined;
  const pid = parsePid(text);
  const alive = pid === process.pid ? heldHere.has(resolve(lockPath)) : pid !== undefined && processExists(pid);
  return { pid, alive };
}

/** The pid of the live holder an acquireOverlayLock refusal names, if `err` is one that names it. */
export function lockHolderOf(err: unknown): number | undefined {
  const holder = (err as { holder?: unknown } | null)?.holder;
  return typeof holder === 'number' ? holder : undefined;
}

/**
 * Take the lock for this process or throw an EBUSY-coded error naming the holder. `what` names
 * the overlay in the message.
 */
export async function acquireOverlayLock(lockPath: string, what: string): Promise<OverlayLock> {
  for (let attempt = 0; ; attempt++) {
    try {
      await createWithContent(lockPath, `${process.pid}\n`);
      const key = resolve(lockPath);
      heldHere.add(key);
      let held = true;
      return {
        path: lockPath,
        release: async () => {
          if (!held) return;
          held = false;
          heldHere.delete(key);
          await removeFile(lockPath);
        },
      };
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    const holder = await lockHolder(lockPath);
    if (holder?.alive === true || attempt > 0) {
      const who =
        holder?.pid === process.pid
          ? 'this process (another server in it)'
          : holder?.pid !== undefined
            ? `process ${holder.pid}`
            : 'another process';
      throw Object.assign(new Error(`${what} is in use by ${who} (lock file ${lockPath})`), {
        code: 'EBUSY',
        holder: holder?.pid,
      });
    }
    // Stale (or gone since EEXIST): remove it if it is still the one we judged, then retry.
    const again = await readText(lockPath);
    if (again !== undefined && (holder === undefined || parsePid(again) === holder.pid)) await removeFile(lockPath);
  }
}
