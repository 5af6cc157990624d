// The data path's file I/O (control-file.ts holds the few control-path calls). Positional I/O
// over the callback `fs.read` / `fs.write` (measured 2-5x faster than FileHandle at queue depth
// 16-64, see STYLE.md 4.8), wrapped in promises, with loops for short reads and writes
// (random-access-file's pattern).
//
// Reading past the end of a file zero-fills the rest of the buffer: overlay files are sparse
// and the base's last block may be partial, so "nothing stored" means zeros, not an error.
//
// I/O strategy. Handing each 4 KiB request to the libuv threadpool costs more than the copy
// itself (futex wake-ups and context switches dominated a profile of a Node NBD server), so
// requests up to SYNC_MAX_BYTES are served with readSync/writeSync on the event loop while
// they are fast, i.e. while they hit the page cache. A guard per descriptor times every
// synchronous call and keeps a moving average: when the average passes SLOW_AVERAGE_MS (most
// calls miss the cache: a cold base, dirty-page throttling) or one call passes SLOW_CALL_MS (a
// slow disk), that descriptor's I/O goes to the threadpool for COOL_DOWN_MS, after which it
// probes again. A single outlier (the process preempted on a busy machine) does not trip it:
// tripping on every 1 ms blip halved QD1 throughput here. So a cold base stalls the other
// connections for a handful of slow calls per cool-down period at most.
//
// Large writes go to the threadpool one at a time per descriptor. ext4 (like most Linux file
// systems) holds the inode's lock for the whole of a buffered write, so concurrent pwrites to
// one file do not overlap: the waiting workers spin on the lock (rwsem_spin_on_owner was 9 % of
// a sequential 1 MiB write profile here) and take CPU from the client and the event loop.
// Queued one at a time, sequential 1 MiB first writes at queue depth 8 ran 1.2-2x faster in
// A/B pairs.

import fs from 'node:fs';

/** An open file descriptor. */
export type Fd = number;

/** Bytes handed to one read(2): below Node's 2 GiB limit, above any sane request. */
const MAX_IO = 1 << 30;

function withPath(err: NodeJS.ErrnoException, path: string): NodeJS.ErrnoException {
  err.path ??= path;
  return err;
}

function readOnce(fd: Fd, buf: Buffer, offset: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.read(fd, buf, offset, length, position, (err, bytesRead) => (err ? reject(err) : resolve(bytesRead)));
  });
}

/** Largest request served synchronously. */
const SYNC_MAX_BYTES = 64 * 1024;
/** A moving average of call times above this means the cache is being missed. */
const SLOW_AVERAGE_MS = 0.25;
/** One call above this is a slow disk: stop at once. */
const SLOW_CALL_MS = 10;
const COOL_DOWN_MS = 500;
/** Weight of the newest call in the moving average. */
const AVERAGE_WEIGHT = 1 / 8;

interface Guard {
  /** Moving average of synchronous call times, ms. */
  averageMs: number;
  /** performance.now() until which I/O goes to the threadpool; 0: synchronous allowed. */
  asyncUntil: number;
}

const guards = new Map<Fd, Guard>();
const syncEnabled = process.env['NBD_COW_SYNC_IO'] !== '0';

function guardOf(fd: Fd): Guard {
  let guard = guards.get(fd);
  if (guard === undefined) {
    guard = { averageMs: 0, asyncUntil: 0 };
    guards.set(fd, guard);
  }
  return guard;
}

/**
 * Whether a transfer of `length` bytes on `fd` may run synchronously now (the fast path is on,
 * it is small, and the descriptor's guard has not sent it to the threadpool).
 */
export function canTransferNow(fd: Fd, length: number): boolean {
  if (!syncEnabled || length > SYNC_MAX_BYTES) return false;
  const guard = guards.get(fd);
  if (guard === undefined || guard.asyncUntil === 0) return true;
  if (performance.now() < guard.asyncUntil) return false;
  guard.asyncUntil = 0;
  return true;
}

/** Account one synchronous transfer begun at `start`; slow ones send the descriptor to the threadpool. */
function recordSyncTime(fd: Fd, start: number): void {
  const end = performance.now();
  const guard = guardOf(fd);
  const took = end - start;
  guard.averageMs += (took - guard.averageMs) * AVERAGE_WEIGHT;
  if (took > SLOW_CALL_MS || guard.averageMs > SLOW_AVERAGE_MS) {
    guard.asyncUntil = end + COOL_DOWN_MS;
    guard.averageMs = 0;
  }
}

/** readAt on the calling thread, with no guard. */
function readAtSync(fd: Fd, buf: Buffer, position: number): void {
  let done = 0;
  while (done < buf.length) {
    const n = fs.readSync(fd, buf, done, buf.length - done, position + done);
    if (n === 0) {
      buf.fill(0, done);
      return;
    }
    done += n;
  }
}

/** writeAt on the calling thread, with no guard. */
function writeAtSync(fd: Fd, buf: Buffer, position: number): void {
  let done = 0;
  while (done < buf.length) {
    const n = fs.writeSync(fd, buf, done, buf.length - done, position + done);
    if (n === 0) throw zeroWrite(position + done);
    done += n;
  }
}

/** writeAt done synchronously and timed by the guard; only after canTransferNow() said yes. */
export function writeAtNow(fd: Fd, buf: Buffer, position: number): void {
  const start = performance.now();
  try {
    writeAtSync(fd, buf, position);
  } finally {
    recordSyncTime(fd, start);
  }
}

/** readAt done synchronously and timed by the guard; only after canTransferNow() said yes. */
function readAtNow(fd: Fd, buf: Buffer, position: number): void {
  const start = performance.now();
  try {
    readAtSync(fd, buf, position);
  } finally {
    recordSyncTime(fd, start);
  }
}

/** Fill all of `buf` from `position`; bytes past the end of the file read as zeros. */
export function readAt(fd: Fd, buf: Buffer, position: number): Promise<void> {
  if (!canTransferNow(fd, buf.length)) return readAtAsync(fd, buf, position);
  try {
    readAtNow(fd, buf, position);
    return Promise.resolve();
  } catch (err) {
    return Promise.reject(err);
  }
}

async function readAtAsync(fd: Fd, buf: Buffer, position: number): Promise<void> {
  let done = 0;
  while (done < buf.length) {
    const n = await readOnce(fd, buf, done, Math.min(buf.length - done, MAX_IO), position + done);
    if (n === 0) {
      buf.fill(0, done);
      return;
    }
    done += n;
  }
}

/** Write all of `buf` at `position`. */
export function writeAt(fd: Fd, buf: Buffer, position: number): Promise<void> {
  if (!canTransferNow(fd, buf.length)) return writeAtAsync(fd, buf, position);
  try {
    writeAtNow(fd, buf, position);
    return Promise.resolve();
  } catch (err) {
    return Promise.reject(err);
  }
}

/** Per descriptor: the last large write queued, which the next one waits for. */
const writeQueues = new Map<Fd, Promise<void>>();

/** Large writes run one after another per descriptor; small ones (a tripped guard) at once. */
function writeAtAsync(fd: Fd, buf: Buffer, position: number): Promise<void> {
  const write = (): Promise<void> => writevAtAsyncNow(fd, [buf], position);
  return buf.length <= SYNC_MAX_BYTES ? write() : inWriteQueue(fd, write);
}

function inWriteQueue(fd: Fd, write: () => Promise<void>): Promise<void> {
  const previous = writeQueues.get(fd);
  const run = previous === undefined ? write() : previous.then(write);
  const settled = run.then(noop, noop);
  writeQueues.set(fd, settled);
  void settled.then(() => {
    if (writeQueues.get(fd) === settled) writeQueues.delete(fd);
  });
  return run;
}

function noop(): void {
  /* a failed write is reported to its own caller; the queue goes on */
}

function zeroWrite(position: number): Error {
  // write(2) returning 0 for a non-empty buffer would loop forever; report it as EIO.
  return Object.assign(new Error(`write returned 0 bytes at position ${position}`), { code: 'EIO' });
}

/** Most pieces handed to one writev call (Linux's IOV_MAX). */
const MAX_IOV = 1024;

/**
 * Write the concatenation of `chunks` at `position` (pwritev): a payload kept in the pieces it
 * arrived in is stored without being joined first. Queued with the large writes.
 */
export function writevAt(fd: Fd, chunks: readonly Buffer[], position: number): Promise<void> {
  let total = 0;
  for (const chunk of chunks) total += chunk.length;
  if (total <= SYNC_MAX_BYTES) return writeAt(fd, Buffer.concat(chunks, total), position);
  return inWriteQueue(fd, () => writevAtAsyncNow(fd, chunks, position));
}

/** The pieces still to write after `written` bytes of `chunks` went out. */
export function remainingChunks(chunks: readonly Buffer[], written: number): Buffer[] {
  const out: Buffer[] = [];
  let skip = written;
  for (const chunk of chunks) {
    if (skip >= chunk.length) {
      skip -= chunk.length;
      continue;
    }
    out.push(skip > 0 ? chunk.subarray(skip) : chunk);
    skip = 0;
  }
  return out;
}

async function writevAtAsyncNow(fd: Fd, chunks: readonly Buffer[], position: number): Promise<void> {
  let pending = chunks.filter((chunk) => chunk.length > 0);
  let at = position;
  while (pending.length > 0) {
    const batch = pending.length > MAX_IOV ? pending.slice(0, MAX_IOV) : pending;
    const n = await writevOnce(fd, batch, at);
    if (n === 0) throw zeroWrite(at);
    pending = remainingChunks(pending, n);
    at += n;
  }
}

function writevOnce(fd: Fd, chunks: readonly Buffer[], position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.writev(fd, chunks as Buffer[], position, (err, written) => (err ? reject(err) : resolve(written)));
  });
}

/** Open `path` with numeric `flags` (fs.constants.O_*) and `mode` for created files. */
export function openFile(path: string, flags: number, mode = 0o600): Promise<Fd> {
  return new Promise((resolve, reject) => {
    fs.open(path, flags, mode, (err, fd) => (err ? reject(withPath(err, path)) : resolve(fd)));
  });
}

/** Close a descriptor. */
export function closeFile(fd: Fd): Promise<void> {
  guards.delete(fd);
  return new Promise((resolve, reject) => {
    fs.close(fd, (err) => (err ? reject(err) : resolve()));
  });
}

/** fdatasync(2): file data (and the size) reach stable storage. */
export function syncData(fd: Fd): Promise<void> {
  return new Promise((resolve, reject) => {
    fs.fdatasync(fd, (err) => (err ? reject(err) : resolve()));
  });
}

/** ftruncate(2): set the file length; growing leaves a hole that reads as zeros. */
export function truncateFile(fd: Fd, length: number): Promise<void> {
  return new Promise((resolve, reject) => {
    fs.ftruncate(fd, length, (err) => (err ? reject(err) : resolve()));
  });
}

/** fstat(2). */
export function statFile(fd: Fd): Promise<fs.Stats> {
  return new Promise((resolve, reject) => {
    fs.fstat(fd, (err, stats) => (err ? reject(err) : resolve(stats)));
  });
}

/** unlink(2). */
export function unlinkFile(path: string): Promise<void> {
  return new Promise((resolve, reject) => {
    fs.unlink(path, (err) => (err ? reject(withPath(err, path)) : resolve()));
  });
}

/** Names in a directory (no `.`/`..`). */
export function listDirectory(path: string): Promise<string[]> {
  return new Promise((resolve, reject) => {
    fs.readdir(path, (err, names) => (err ? reject(withPath(err, path)) : resolve(names)));
  });
}

/** The open flags this layer uses, re-exported so callers need not import fs. */
export const O_RDONLY = fs.constants.O_RDONLY;
export const O_RDWR = fs.constants.O_RDWR;
export const O_CREAT_EXCL_RDWR = fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_EXCL;
