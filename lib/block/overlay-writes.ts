// The locked half of the copy-on-write device's writes (cow-device.ts holds the lock and the
// overlay's lifecycle): a range written as head, body and tail, a partial block read-modify-
// written from the base or from zeros, trim and zero turning whole blocks into "zero", and the
// space each takes under the overlay's limits (space-budget.ts). Data reaches the overlay before
// the map says "data". Every method runs with the caller holding the range lock on its blocks.

import type { BaseImage } from './base-image.js';
import { type Bitmap, BLOCK_BASE, BLOCK_DATA, BLOCK_ZERO } from './bitmap.js';
import type { OverlayEvents } from './overlay-events.js';
import type { OverlayFile } from './overlay-file.js';
import { blockSpan, type PartialBlock, roundDown, splitRange } from './ranges.js';
import type { OverlaySpace } from './space-budget.js';

/** Upper bound on the buffer a zero with noHole allocates. */
const CHUNK = 1024 * 1024;

/**
 * Wait for every job, then fail with the first failure: a request holds its lock, and its
 * space, until nothing of it is still writing (Promise.all would settle at the first failure).
 */
async function settleAll(jobs: readonly Promise<void>[]): Promise<void> {
  if (jobs.length === 1) return jobs[0];
  const results = await Promise.allSettled(jobs);
  for (const result of results) if (result.status === 'rejected') throw result.reason;
}

/** How many of the partial blocks a trim or zero turns from "base" into "data" (zero-filled copies). */
function baseEdges(map: Bitmap, head: PartialBlock | undefined, tail: PartialBlock | undefined): number {
  return (
    (head !== undefined && map.get(head.block) === BLOCK_BASE ? 1 : 0) +
    (tail !== undefined && map.get(tail.block) === BLOCK_BASE ? 1 : 0)
  );
}

export class OverlayWriter {
  readonly #base: BaseImage;
  readonly #blockSize: number;
  readonly #size: number;
  /** The data the overlay holds against its limits; undefined when there are none. */
  readonly #space: OverlaySpace | undefined;
  readonly #events: OverlayEvents;

  constructor(base: BaseImage, blockSize: number, space: OverlaySpace | undefined, events: OverlayEvents) {
    this.#base = base;
    this.#blockSize = blockSize;
    this.#size = base.size;
    this.#space = space;
    this.#events = events;
  }

  /**
   * Run `fn`, which makes every block of [offset, offset + length) "data", once the space of
   * those that are not yet is taken (or refused, before anything is written). What a failed
   * `fn` left unwritten is given back; the lock keeps every other request off these blocks.
   * Not async: without limits it adds no promise to the write.
   */
  asData(overlay: OverlayFile, offset: number, length: number, fn: () => Promise<void>): Promise<void> {
    const space = this.#space;
    if (space === undefined) return fn();
    const [first, last] = blockSpan(offset, length, this.#blockSize);
    space.takeForData(overlay.map, first, last - first + 1); // throws ENOSPC to #locked
    return fn().catch((err: unknown) => {
      space.giveUnwritten(overlay.map, first, last - first + 1);
      throw err;
    });
  }

  async writeRange(overlay: OverlayFile, offset: number, data: Buffer): Promise<void> {
    const { head, body, tail } = splitRange(offset, data.length, this.#blockSize, this.#size);
    const at = (start: number, end: number): Buffer => data.subarray(start - offset, end - offset);
    const jobs: Promise<void>[] = [];
    if (head) jobs.push(this.#writePartial(overlay, head, at(head.start, head.end)));
    if (body) {
      const written = overlay.writeData(body.start, at(body.start, body.end));
      jobs.push(written.then(() => overlay.map.setRange(body.first, body.count, BLOCK_DATA)));
    }
    if (tail) jobs.push(this.#writePartial(overlay, tail, at(tail.start, tail.end)));
    await settleAll(jobs);
  }

  /** Write part of one block: in place if it holds data, else read-modify-write. */
  async #writePartial(overlay: OverlayFile, piece: PartialBlock, bytes: Buffer): Promise<void> {
    const state = overlay.map.get(piece.block);
    if (state === BLOCK_DATA) return overlay.writeData(piece.start, bytes);
    const blockStart = piece.block * this.#blockSize;
    const block = Buffer.allocUnsafe(Math.min(blockStart + this.#blockSize, this.#size) - blockStart);
    if (state === BLOCK_BASE) await this.#base.read(blockStart, block);
    else block.fill(0);
    bytes.copy(block, piece.start - blockStart);
    await overlay.writeData(blockStart, block);
    overlay.map.set(piece.block, BLOCK_DATA);
    this.#events.copiedUp(overlay.path, piece.block, state === BLOCK_BASE ? 'base' : 'zero');
  }

  /**
   * trim and zero without noHole: whole blocks become "zero", partial blocks are zero-filled.
   * Space is settled first, net of the data the whole blocks free, so a refusal changes nothing.
   */
  async punch(overlay: OverlayFile, offset: number, length: number): Promise<void> {
    const { head, body, tail } = splitRange(offset, length, this.#blockSize, this.#size);
    const map = overlay.map;
    const space = this.#space;
    if (space !== undefined) {
      space.exchange(baseEdges(map, head, tail), body ? map.countState(body.first, body.count, BLOCK_DATA) : 0);
    }
    if (body) {
      map.setRange(body.first, body.count, BLOCK_ZERO);
      this.#events.zeroed(overlay.path, body.first, body.count);
    }
    const jobs: Promise<void>[] = [];
    for (const piece of [head, tail]) {
      if (piece && map.get(piece.block) !== BLOCK_ZERO) {
        jobs.push(this.#writePartial(overlay, piece, Buffer.alloc(piece.end - piece.start)));
      }
    }
    try {
      await settleAll(jobs);
    } catch (err) {
      space?.give(baseEdges(map, head, tail));
      throw err;
    }
  }

  /** zero with noHole: real zero bytes (state "data"), at most CHUNK bytes allocated. */
  async writeZeros(overlay: OverlayFile, offset: number, length: number): Promise<void> {
    const chunk = Math.max(this.#blockSize, roundDown(CHUNK, this.#blockSize));
    const zeros = Buffer.alloc(Math.min(chunk, length));
    const end = offset + length;
    // Chunk boundaries fall on multiples of `chunk`, hence on block boundaries.
    for (let pos = offset; pos < end; ) {
      const next = Math.min(roundDown(pos, chunk) + chunk, end);
      await this.writeRange(overlay, pos, zeros.subarray(0, next - pos));
      pos = next;
    }
  }
}
