// Directory listings for tests that watch overlay files appear and go, and the descriptors open on a file.

import { existsSync, readdirSync, readlinkSync } from 'node:fs';

/** Files in `dir` (sorted); [] when it does not exist. */
export function listDir(dir: string): string[] {
  return existsSync(dir) ? readdirSync(dir).sort() : [];
}

/**
 * The listing of `dir` once `accept(listing)` holds, polling every 20 ms for up to
 * `timeoutMs` (the server deletes an overlay just after the client disconnects); the last
 * listing if it never does, for the assertion to show.
 */
export async function waitForDir(dir: string, accept: (names: string[]) => boolean, timeoutMs = 10_000): Promise<string[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const names = listDir(dir);
    if (accept(names) || Date.now() > deadline) return names;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** The listing of `dir` once it is empty (or after the timeout). */
export function waitForEmptyDir(dir: string, timeoutMs = 10_000): Promise<string[]> {
  return waitForDir(dir, (names) => names.length === 0, timeoutMs);
}

/** File descriptors of this process open on `path` (Linux: /proc/self/fd). */
export function fdsOn(path: string): number {
  let count = 0;
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      if (readlinkSync(`/proc/self/fd/${fd}`) === path) count++;
    } catch {
      // closed while we looked
    }
  }
  return count;
}
