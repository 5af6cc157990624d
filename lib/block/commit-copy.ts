// The copy loop of `overlay commit`: base + overlay composed a window at a time and written to
// the new image with its zeros left as holes; then the image read back whole and compared with
// base + overlay composed again, while its data is flushed to disk.
//
//   compose   the window's blocks still in the base come in one pread spanning them, each run
//             of "data" blocks in one pread from the overlay on top, "zero" runs are filled;
//   write     runs of ZERO_GRAIN pieces that are not all zero, one pwrite each; the rest stays a
//             hole of the file (ftruncate'd to the full size first), so the image is sparse
//             wherever it reads as zeros: a trim, a zeroed write or zeros in the base;
//   verify    once everything is written, each window of the file read back (holes included)
//             and compared byte for byte with the window composed again: a write that went
//             missing, landed elsewhere or came back short, or a piece wrongly taken for zeros,
//             fails the commit;
//   flush     fdatasync, started with the verification: one waits on the disk, the other on
//             memory, so the flush costs little more than the verification alone.
//
// Both last steps can be left out (`--no-verify`, `--no-flush`): without them the copy is what
// a plain `qemu-img convert` does, and costs about what it costs.
//
// Why this shape, measured on 1 GiB with a tenth of it in the overlay (2 cores, base in the page
// cache; bench/commit.ts and variants of this loop, interleaved, 3-5 runs each): at best the
// copy pass alone costs what `qemu-img convert` costs for the whole job (0.36-0.44 s against
// 0.38-0.46 s), often up to twice that, as this VM is slow to hand out fresh page-cache memory
// (bench/README.md); the verification with the flush beside it adds 0.3-0.5 s. Reading each
// window back right after writing it, while the next ones were being written, made the copy 2-4
// times slower (this disk reads ahead 8 MiB: probably into windows not yet written); fdatasync
// calls started during the copy slowed the writes beside them more than they saved at the end;
// 1 MiB windows did better than 4 MiB ones (a window can stay in the CPU's cache between its
// read and its write), and 4 in flight as well as 6 or 8.

import { pageAlignedBuffer } from './aligned-buffer.js';
import type { BaseImage } from './base-image.js';
import { BLOCK_BASE, BLOCK_DATA } from './bitmap.js';
import { codedError } from './coded-error.js';
import type { DataFile } from './data-file.js';
import { DIRECT_ALIGNMENT } from './direct-io-file.js';
import { forEachRun, type InspectedOverlay } from './overlay-inspect.js';
import { MAX_BLOCK_SIZE } from './overlay-layout.js';

/** Bytes composed, written and verified as one piece: a multiple of every block size. */
export const WINDOW = MAX_BLOCK_SIZE;
/** Windows in flight. */
const IN_FLIGHT = 4;
/** Granularity of the zero check: a file system block. */
export const ZERO_GRAIN = 4096;

const ZEROS = Buffer.alloc(ZERO_GRAIN);

/** [from, to) byte ranges of `buf` made of ZERO_GRAIN pieces that are not all zero. */
export function nonZeroRuns(buf: Buffer): Array<[number, number]> {
  const runs: Array<[number, number]> = [];
  let from = -1;
  for (let at = 0; at < buf.length; at += ZERO_GRAIN) {
    const end = Math.min(at + ZERO_GRAIN, buf.length);
    // Most data is settled by its first or last byte, without a call into C++.
    const zero = buf[at] === 0 && buf[end - 1] === 0 && buf.subarray(at, end).equals(ZEROS.subarray(0, end - at));
    if (!zero && from < 0) from = at;
    else if (zero && from >= 0) {
      runs.push([from, at]);
      from = -1;
    }
  }
  if (from >= 0) runs.push([from, buf.length]);
  return runs;
}

/** The first offset where `a` and `b` (of one length) differ, or -1. */
export function firstDifference(a: Buffer, b: Buffer): number {
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return i;
  return -1;
}

/** What copyImage() copies: the image's bytes, a window at a time. */
export interface ImageSource {
  /** Fill `dest` with the image's bytes at [start, start + dest.length); start is a multiple of WINDOW. */
  compose(start: number, dest: Buffer): Promise<void>;
}

/** Base + overlay, composed a window at a time into a caller's buffer. */
export class Composer implements ImageSource {
  readonly #base: BaseImage;
  readonly #overlay: DataFile;
  readonly #o: InspectedOverlay;

  constructor(base: BaseImage, overlay: DataFile, inspected: InspectedOverlay) {
    this.#base = base;
    this.#overlay = overlay;
    this.#o = inspected;
  }

  async compose(start: number, dest: Buffer): Promise<void> {
    const { blockSize, dataOffset } = this.#o.geometry;
    const end = start + dest.length;
    const data: Array<[number, number]> = [];
    const zero: Array<[number, number]> = [];
    let baseFrom = -1;
    let baseTo = -1;
    forEachRun(this.#o.map, start / blockSize, Math.ceil(end / blockSize), (state, block, count) => {
      const from = block * blockSize - start;
      const to = Math.min((block + count) * blockSize, end) - start;
      if (state === BLOCK_BASE) {
        if (baseFrom < 0) baseFrom = from;
        baseTo = to;
      } else (state === BLOCK_DATA ? data : zero).push([from, to]);
    });
    // One read for every base block of the window; the runs between are overwritten after it.
    if (baseFrom >= 0) await this.#base.read(start + baseFrom, dest.subarray(baseFrom, baseTo));
    for (const [from, to] of zero) dest.fill(0, from, to);
    await Promise.all(data.map(([from, to]) => this.#overlay.read(dest.subarray(from, to), dataOffset + start + from)));
  }
}

/** What copyImage() writes to: a DataFile opened read-write, or a DirectIoFile over one. */
export type CopyTarget = Pick<DataFile, 'path' | 'truncate' | 'write' | 'read' | 'sync'>;

/**
 * Run `fn(start, composed, readBack)` for each WINDOW of an image of `size` bytes, IN_FLIGHT at
 * a time, each worker with two buffers of its own, cut to the window's length. The first
 * failure (or `signal`) stops the others from taking more windows; it is thrown once every
 * worker has stopped, so nothing reads or writes after this returns.
 */
async function forEachWindow(
  size: number,
  signal: AbortSignal | undefined,
  fn: (start: number, composed: Buffer, readBack: Buffer) => Promise<void>,
): Promise<void> {
  const count = Math.ceil(size / WINDOW);
  let next = 0;
  let failed = false;
  const workers = Math.min(IN_FLIGHT, count);
  // Every buffer starts at a page boundary, so that a direct-I/O target takes the windows as they are.
  const slot = Math.ceil(Math.min(WINDOW, size) / DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT;
  const memory = pageAlignedBuffer(2 * workers * slot);
  const worker = async (index: number): Promise<void> => {
    const composed = memory.subarray(2 * index * slot, (2 * index + 1) * slot);
    const readBack = memory.subarray((2 * index + 1) * slot, (2 * index + 2) * slot);
    while (!failed && next < count) {
      const start = next++ * WINDOW;
      const length = Math.min(WINDOW, size - start);
      try {
        signal?.throwIfAborted();
        await fn(start, composed.subarray(0, length), readBack.subarray(0, length));
      } catch (err) {
        failed = true;
        throw err;
      }
    }
  };
  const results = await Promise.allSettled(Array.from({ length: workers }, (_, index) => worker(index)));
  const rejected = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
  if (rejected !== undefined) throw rejected.reason;
}

export interface CopyOptions {
  /** Bytes of the image. */
  readonly size: number;
  /** Checked between windows: the copy stops and throws its reason. */
  readonly signal?: AbortSignal | undefined;
  /** Told, after each window, the bytes of the image done in the current phase. */
  readonly progress?: (phase: 'copy' | 'verify', done: number) => void;
  /** Read the image back whole and compare it with the source (default: true). */
  readonly verify?: boolean;
  /** fdatasync the image once written (default: true). */
  readonly flush?: boolean;
}

/** Write the composed image into `out`, zeros as holes; returns the bytes written. */
async function copy(source: ImageSource, out: CopyTarget, options: CopyOptions): Promise<number> {
  let written = 0;
  let done = 0;
  await out.truncate(options.size);
  await forEachWindow(options.size, options.signal, async (start, composed) => {
    await source.compose(start, composed);
    for (const [from, to] of nonZeroRuns(composed)) {
      await out.write(composed.subarray(from, to), start + from);
      written += to - from;
    }
    done += composed.length;
    options.progress?.('copy', done);
  });
  return written;
}

/** Read `out` back whole and compare it with the image composed again. */
async function verify(source: ImageSource, out: CopyTarget, options: CopyOptions): Promise<void> {
  let done = 0;
  await forEachWindow(options.size, options.signal, async (start, composed, readBack) => {
    await Promise.all([source.compose(start, composed), out.read(readBack, start)]);
    if (!composed.equals(readBack)) {
      const at = start + firstDifference(composed, readBack);
      throw codedError('EIO', `verification failed: ${out.path} differs from base + overlay at offset ${at}`);
    }
    done += composed.length;
    options.progress?.('verify', done);
  });
}

/**
 * Write the image `source` composes into the empty `out`, then verify it and make it durable
 * unless told not to (see the top of this file). Returns the bytes written; the rest of `out` is
 * holes.
 */
export async function copyImage(source: ImageSource, out: CopyTarget, options: CopyOptions): Promise<number> {
  const written = await copy(source, out, options);
  const [flushed, verified] = await Promise.allSettled([
    options.flush === false ? undefined : out.sync(),
    options.verify === false ? undefined : verify(source, out, options),
  ]);
  if (verified.status === 'rejected') throw verified.reason;
  if (flushed.status === 'rejected') throw flushed.reason;
  return written;
}
