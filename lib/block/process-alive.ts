// Whether a process id names a running process: the test behind sweeping ephemeral overlays
// of dead servers and taking over stale named-overlay locks, and which process is whose child.

import { readFileSync } from 'node:fs';

/** True if `pid` runs (also when it belongs to another user: kill(2) then says EPERM). */
export function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}

/**
 * The parent of process `pid` (Linux: /proc/PID/stat), or undefined when it cannot be read. Two
 * workers of one `serve --workers N` have the same parent, the primary.
 */
export function parentPid(pid: number): number | undefined {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'latin1');
  } catch {
    return undefined;
  }
  // "PID (COMM) STATE PPID …": COMM may hold spaces and parentheses, so read after the last ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ppid = Number(fields[1]);
  return Number.isSafeInteger(ppid) && ppid > 0 ? ppid : undefined;
}
