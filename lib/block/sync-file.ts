// Synchronous file calls for the control path only: opening a named overlay at NBD_OPT_GO
// (option handling is synchronous, and a refusal must still become an option reply), its lock
// file, and the `overlay check` tool. The data path stays in file.ts. Each call here is one
// small syscall on a local file (a header, a map of at most a few MiB, a pid), done once per
// overlay open, not per request.

import fs from 'node:fs';
import type { Fd } from './file.js';

// Positional transfers share file.ts's loops (short reads and writes, zeros past the end).
export { readAtSync } from './file.js';

export function openSync(path: string, flags: number, mode = 0o600): Fd {
  return fs.openSync(path, flags, mode);
}

export function closeSync(fd: Fd): void {
  fs.closeSync(fd);
}

export function syncDataSync(fd: Fd): void {
  fs.fdatasyncSync(fd);
}

export function fileSizeSync(fd: Fd): { size: number; allocated: number } {
  const st = fs.fstatSync(fd);
  return { size: st.size, allocated: st.blocks * 512 };
}

/** Create `path` holding `text` atomically: written to a temporary name, then hard-linked. */
export function createWithContentSync(path: string, text: string): void {
  const tmp = `${path}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, text, { mode: 0o600 });
  try {
    fs.linkSync(tmp, path); // EEXIST when someone holds it
  } finally {
    fs.rmSync(tmp, { force: true });
  }
}

/** Give the file at `tmp` the name `path` (failing with EEXIST if taken), then drop `tmp`. */
export function publishSync(tmp: string, path: string): void {
  fs.linkSync(tmp, path);
  fs.rmSync(tmp, { force: true });
}

/** fsync(2) a directory, so names created in it survive a power loss. */
export function syncDirectorySync(dir: string): void {
  const fd = fs.openSync(dir, fs.constants.O_RDONLY);
  try {
    fs.fsyncSync(fd);
  } finally {
    fs.closeSync(fd);
  }
}

/** The text of `path`, or undefined when it does not exist. */
export function readTextSync(path: string): string | undefined {
  try {
    return fs.readFileSync(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
}

/** unlink(2), ignoring a file that is already gone. */
export function removeSync(path: string): void {
  fs.rmSync(path, { force: true });
}
