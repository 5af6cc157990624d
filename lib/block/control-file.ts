// Asynchronous file calls for the control path: lock files, publishing new overlays, directory
// fsync. Callback `fs` wrapped in promises, as syscalls.ts does; each call runs
// once per overlay open, create or close, never per request, and never blocks the event loop.

import fs from 'node:fs';
import { closeFile, O_RDONLY, openFile, unlinkFile } from './syscalls.js';

/** Temporary names made by this process, so concurrent creates never share one. */
let tmpSeq = 0;

function settle(resolve: () => void, reject: (err: unknown) => void): (err: NodeJS.ErrnoException | null) => void {
  return (err) => (err ? reject(err) : resolve());
}

/** link(2): give the file at `existing` the extra name `path`; EEXIST when `path` is taken. */
function linkFile(existing: string, path: string): Promise<void> {
  return new Promise((resolve, reject) => fs.link(existing, path, settle(resolve, reject)));
}

/** unlink(2), ignoring a file that is already gone (rm -f). */
export async function removeFile(path: string): Promise<void> {
  try {
    await unlinkFile(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
}

/** The text of the small file `path`, or undefined when it does not exist. */
export function readText(path: string): Promise<string | undefined> {
  return new Promise((resolve, reject) => {
    fs.readFile(path, 'utf8', (err, text) => {
      if (err === null) resolve(text);
      else if (err.code === 'ENOENT') resolve(undefined);
      else reject(err);
    });
  });
}

/** Create `path` holding `text` atomically: written to a temporary name, then hard-linked. */
export async function createWithContent(path: string, text: string): Promise<void> {
  const tmp = `${path}.${process.pid}-${++tmpSeq}.tmp`;
  await new Promise<void>((resolve, reject) => fs.writeFile(tmp, text, { mode: 0o600 }, settle(resolve, reject)));
  try {
    await linkFile(tmp, path); // EEXIST when someone holds it
  } finally {
    await removeFile(tmp);
  }
}

/** Give the file at `tmp` the name `path` (failing with EEXIST if taken), then drop `tmp`. */
export async function publish(tmp: string, path: string): Promise<void> {
  await linkFile(tmp, path);
  await removeFile(tmp);
}

/** fsync(2) a directory, so names created in it survive a power loss. */
export async function syncDirectory(dir: string): Promise<void> {
  const fd = await openFile(dir, O_RDONLY);
  try {
    await new Promise<void>((resolve, reject) => fs.fsync(fd, settle(resolve, reject)));
  } finally {
    await closeFile(fd);
  }
}
