// Whole transfers at a file position, looping over short reads and writes (random-access-file's
// pattern), in two flavours that say where they run: `…Inline` blocks the calling thread (the
// event loop) in readSync/writeSync, `…InThreadpool` hands each call to libuv's threadpool.
// Which one a request takes is data-file.ts's decision, not this file's.
//
// Reading past the end of a file zero-fills the rest of the buffer: overlay files are sparse
// and the base's last block may be partial, so "nothing stored" means zeros, not an error.

import fs from 'node:fs';
import type { Fd } from './syscalls.js';

/** Bytes handed to one read(2): below Node's 2 GiB limit, above any sane request. */
const MAX_IO = 1 << 30;
/** Most pieces handed to one writev call (Linux's IOV_MAX). */
const MAX_IOV = 1024;

function zeroWrite(position: number): Error {
  // write(2) returning 0 for a non-empty buffer would loop forever; report it as EIO.
  return Object.assign(new Error(`write returned 0 bytes at position ${position}`), { code: 'EIO' });
}

/** Fill all of `buf` from `position` on the calling thread; bytes past the end read as zeros. */
export function readFullyInline(fd: Fd, buf: Buffer, position: number): void {
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

/** Write all of `buf` at `position` on the calling thread. */
export function writeFullyInline(fd: Fd, buf: Buffer, position: number): void {
  let done = 0;
  while (done < buf.length) {
    const n = fs.writeSync(fd, buf, done, buf.length - done, position + done);
    if (n === 0) throw zeroWrite(position + done);
    done += n;
  }
}

function readOnce(fd: Fd, buf: Buffer, offset: number, length: number, position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.read(fd, buf, offset, length, position, (err, bytesRead) => (err ? reject(err) : resolve(bytesRead)));
  });
}

/** readFullyInline's contract, each read(2) in the threadpool. */
export async function readFullyInThreadpool(fd: Fd, buf: Buffer, position: number): Promise<void> {
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

function writevOnce(fd: Fd, chunks: readonly Buffer[], position: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.writev(fd, chunks as Buffer[], position, (err, written) => (err ? reject(err) : resolve(written)));
  });
}

/**
 * Write the concatenation of `chunks` at `position` (pwritev), each call in the threadpool: a
 * payload kept in the pieces it arrived in is stored without being joined first. Batches
 * larger than IOV_MAX are split, short writes continue where they stopped.
 */
export async function writevFullyInThreadpool(fd: Fd, chunks: readonly Buffer[], position: number): Promise<void> {
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
