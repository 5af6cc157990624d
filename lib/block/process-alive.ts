// Whether a process id names a running process: the test behind sweeping ephemeral overlays
// of dead servers and taking over stale named-overlay locks.

/** True if `pid` runs (also when it belongs to another user: kill(2) then says EPERM). */
export function processExists(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code !== 'ESRCH';
  }
}
