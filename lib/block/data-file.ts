// A file on the data path (the base image, an overlay): positional reads and writes, each one
// run inline or in the threadpool as this file's policy decides, with the state that policy
// needs kept per file.
//
// - Transfers up to INLINE_MAX_BYTES run inline while the file's InlineIoGuard allows it
//   (inline-io-guard.ts says why and when it stops); the others go to the threadpool.
// - Large writes go to the threadpool one at a time per file. ext4 (like most Linux file
//   systems) holds the inode's lock for the whole of a buffered write, so concurrent pwrites to
//   one file do not overlap: the waiting workers spin on the lock (rwsem_spin_on_owner was 9 %
//   of a sequential 1 MiB write profile here) and take CPU from the client and the event loop.
//   Queued one at a time, sequential 1 MiB first writes at queue depth 8 ran 1.2-2x faster in
//   A/B pairs. Small writes sent to the threadpool by a tripped guard run at once.

import type fs from 'node:fs';
import { INLINE_MAX_BYTES, InlineIoGuard } from './inline-io-guard.js';
import { readFullyInline, readFullyInThreadpool, writeFullyInline, writevFullyInThreadpool } from './positional-io.js';
import { SerialQueue } from './serial-queue.js';
import { closeFile, type Fd, openFile, statFile, syncData, truncateFile } from './syscalls.js';

export class DataFile {
  readonly path: string;
  readonly #fd: Fd;
  readonly #guard = new InlineIoGuard();
  readonly #largeWrites = new SerialQueue();

  private constructor(path: string, fd: Fd) {
    this.path = path;
    this.#fd = fd;
  }

  /** Open `path` with numeric `flags` (syscalls.ts's O_*) and `mode` for a created file. */
  static async open(path: string, flags: number, mode = 0o600): Promise<DataFile> {
    return new DataFile(path, await openFile(path, flags, mode));
  }

  /**
   * Fill all of `buf` from `position`; bytes past the end of the file read as zeros. `guard`
   * decides inline or threadpool: the file's own by default, or a reader's own (a connection's,
   * on a file many share), so that one reader's cache misses send only its reads to the pool.
   */
  read(buf: Buffer, position: number, guard: InlineIoGuard = this.#guard): Promise<void> {
    if (!guard.allows(buf.length)) return readFullyInThreadpool(this.#fd, buf, position);
    const start = performance.now();
    try {
      readFullyInline(this.#fd, buf, position);
      return Promise.resolve();
    } catch (err) {
      return Promise.reject(err);
    } finally {
      guard.record(start);
    }
  }

  /** Write all of `buf` at `position`. */
  write(buf: Buffer, position: number): Promise<void> {
    if (this.#guard.allows(buf.length)) {
      try {
        this.writeInline(buf, position);
        return Promise.resolve();
      } catch (err) {
        return Promise.reject(err);
      }
    }
    const write = (): Promise<void> => writevFullyInThreadpool(this.#fd, [buf], position);
    return buf.length <= INLINE_MAX_BYTES ? write() : this.#largeWrites.run(write);
  }

  /** Write the concatenation of `chunks` at `position`, without joining them when they are large. */
  writev(chunks: readonly Buffer[], position: number): Promise<void> {
    let total = 0;
    for (const chunk of chunks) total += chunk.length;
    if (total <= INLINE_MAX_BYTES) return this.write(Buffer.concat(chunks, total), position);
    return this.#largeWrites.run(() => writevFullyInThreadpool(this.#fd, chunks, position));
  }

  /** Whether writeInline() of `length` bytes may run now. */
  canWriteInline(length: number): boolean {
    return this.#guard.allows(length);
  }

  /** Write all of `buf` at `position` on the event loop, timed by the guard; only after canWriteInline(). */
  writeInline(buf: Buffer, position: number): void {
    const start = performance.now();
    try {
      writeFullyInline(this.#fd, buf, position);
    } finally {
      this.#guard.record(start);
    }
  }

  /** fdatasync(2). */
  sync(): Promise<void> {
    return syncData(this.#fd);
  }

  /** ftruncate(2). */
  truncate(length: number): Promise<void> {
    return truncateFile(this.#fd, length);
  }

  /** fstat(2). */
  stat(): Promise<fs.Stats> {
    return statFile(this.#fd);
  }

  /** close(2); the caller makes sure nothing is in flight. */
  close(): Promise<void> {
    return closeFile(this.#fd);
  }
}
