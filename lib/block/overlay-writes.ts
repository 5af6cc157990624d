// The locked half of the copy-on-write device's writes (cow-device.ts holds the lock and the
// overlay's lifecycle): a range written as head, body and tail, a partial block read-modify-
// written from the base or from zeros, trim and zero turning whole blocks into "zero", and the
// space each takes under the overlay's limits (space-budget.ts). Data reaches the overlay before
// the map says "data". Every method runs with the caller holding the range lock on its blocks.
//
// A client's WRITE stores no data for a whole block that needs none (write-payload.ts says which):
// a block of zeros becomes "zero", and with `elideBaseMatches` a block equal to the base's goes
// back to "base". Such a block changes only the map, as a trim does: its old data, if any, gives
// its space back and its bytes stay in the file unread; the map reaches the disk at the next flush
// (FUA: this request's), like any change. Partial blocks are written as always.

import type { BaseImage } from './base-image.js';
import { type Bitmap, BLOCK_BASE, BLOCK_DATA, BLOCK_ZERO } from './bitmap.js';
import type { InlineIoGuard } from './inline-io-guard.js';
import type { OverlayEvents } from './overlay-events.js';
import type { OverlayFile } from './overlay-file.js';
import { blockSpan, type PartialBlock, roundDown, type SplitRange, splitRange, type WholeBlocks } from './ranges.js';
import type { OverlaySpace } from './space-budget.js';
import { type BlockRun, WritePayload } from './write-payload.js';

/** Upper bound on the buffer a zero with noHole allocates, and on the base read to compare a WRITE with. */
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

/** How many blocks of `runs` are not in state "data" in `map`. */
function notData(map: Bitmap, runs: readonly BlockRun[]): number {
  let n = 0;
  for (const run of runs) n += run.count - map.countState(run.first, run.count, BLOCK_DATA);
  return n;
}

export interface OverlayWriterOptions {
  readonly base: BaseImage;
  readonly blockSize: number;
  /** The data the overlay holds against its limits; undefined when there are none. */
  readonly space: OverlaySpace | undefined;
  readonly events: OverlayEvents;
  /** Compare each whole block a WRITE stores with the base's, and store none that is equal. */
  readonly elideBaseMatches: boolean;
  /** The device's guard for its base reads (BaseImage.read); the base file's own when absent. */
  readonly baseGuard?: InlineIoGuard;
}

export class OverlayWriter {
  readonly #base: BaseImage;
  readonly #blockSize: number;
  readonly #size: number;
  readonly #space: OverlaySpace | undefined;
  readonly #events: OverlayEvents;
  readonly #elideBaseMatches: boolean;
  readonly #baseGuard: InlineIoGuard | undefined;

  constructor(options: OverlayWriterOptions) {
    this.#baseGuard = options.baseGuard;
    this.#base = options.base;
    this.#blockSize = options.blockSize;
    this.#size = options.base.size;
    this.#space = options.space;
    this.#events = options.events;
    this.#elideBaseMatches = options.elideBaseMatches;
  }

  /** Whether a WRITE with whole blocks must come here (write()) rather than be stored as it is. */
  get checksBase(): boolean {
    return this.#elideBaseMatches;
  }

  /**
   * A client's WRITE of `chunks` at `offset`: whole blocks that need no data (zeros; equal to the
   * base with elideBaseMatches) change state only, the rest is written as writeRange() does.
   * Space is settled first, for the blocks that become "data" net of the data the others free,
   * so a refusal changes nothing; what a failed write left unwritten is given back.
   */
  async write(overlay: OverlayFile, offset: number, chunks: readonly Buffer[]): Promise<void> {
    const payload = new WritePayload(offset, chunks);
    const split = splitRange(offset, payload.length, this.#blockSize, this.#size);
    const { head, body, tail } = split;
    let runs: BlockRun[] = [];
    if (body) {
      runs = (this.#elideBaseMatches ? await this.#classifyWithBase(payload, body) : payload.classify(body, this.#blockSize)) ?? [
        { first: body.first, count: body.count, state: BLOCK_DATA },
      ];
    }
    const map = overlay.map;
    const stored = runs.filter((run) => run.state === BLOCK_DATA);
    const elided = runs.filter((run) => run.state !== BLOCK_DATA);
    for (const edge of [head, tail]) if (edge) stored.push({ first: edge.block, count: 1, state: BLOCK_DATA });
    const space = this.#space;
    let freeing = 0;
    for (const run of elided) freeing += map.countState(run.first, run.count, BLOCK_DATA);
    space?.exchange(notData(map, stored), freeing); // throws ENOSPC to #locked, nothing changed
    for (const run of elided) {
      map.setRange(run.first, run.count, run.state);
      this.#events.elided(overlay.path, run.first, run.count, run.state === BLOCK_ZERO ? 'zero' : 'base');
    }
    try {
      await this.#store(overlay, payload, split, runs);
    } catch (err) {
      space?.give(notData(map, stored));
      throw err;
    }
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

  /** Write `data` at `offset` as it is: every block it touches becomes "data" (the caller took the space). */
  writeRange(overlay: OverlayFile, offset: number, data: Buffer): Promise<void> {
    const split = splitRange(offset, data.length, this.#blockSize, this.#size);
    const body = split.body;
    const runs: BlockRun[] = body ? [{ first: body.first, count: body.count, state: BLOCK_DATA }] : [];
    return this.#store(overlay, new WritePayload(offset, [data]), split, runs);
  }

  /** Write the head, the tail and the body's runs in state "data"; each becomes "data" once written. */
  async #store(overlay: OverlayFile, payload: WritePayload, split: SplitRange, runs: readonly BlockRun[]): Promise<void> {
    const { head, tail } = split;
    const bs = this.#blockSize;
    const jobs: Promise<void>[] = [];
    if (head) jobs.push(this.#writePartial(overlay, head, payload.bytes(head.start, head.end)));
    for (const run of runs) {
      if (run.state !== BLOCK_DATA) continue;
      const start = run.first * bs;
      const pieces = payload.pieces(start, Math.min((run.first + run.count) * bs, this.#size));
      const written =
        pieces.length === 1 ? overlay.writeData(start, pieces[0] as Buffer) : overlay.writeDataChunks(start, pieces);
      jobs.push(written.then(() => overlay.map.setRange(run.first, run.count, BLOCK_DATA)));
    }
    if (tail) jobs.push(this.#writePartial(overlay, tail, payload.bytes(tail.start, tail.end)));
    await settleAll(jobs);
  }

  /**
   * payload.classify() against the base's bytes, read CHUNK bytes at a time into one buffer, so
   * a large WRITE does not hold a copy of its size from the base; runs that meet are joined.
   */
  async #classifyWithBase(payload: WritePayload, body: WholeBlocks): Promise<BlockRun[] | null> {
    const bs = this.#blockSize;
    const step = Math.max(bs, roundDown(CHUNK, bs));
    const buf = Buffer.allocUnsafe(Math.min(step, body.end - body.start));
    const runs: BlockRun[] = [];
    for (let start = body.start; start < body.end; start += step) {
      const end = Math.min(start + step, body.end);
      const base = buf.subarray(0, end - start);
      await this.#base.read(start, base, this.#baseGuard);
      const blocks: WholeBlocks = { first: start / bs, count: Math.ceil((end - start) / bs), start, end };
      for (const run of payload.classify(blocks, bs, base) ?? [{ ...blocks, state: BLOCK_DATA }]) {
        const last = runs.at(-1);
        if (last?.state === run.state) runs[runs.length - 1] = { ...last, count: last.count + run.count };
        else runs.push({ first: run.first, count: run.count, state: run.state });
      }
    }
    return runs.length === 1 && runs[0]?.state === BLOCK_DATA ? null : runs;
  }

  /** Write part of one block: in place if it holds data, else read-modify-write. */
  async #writePartial(overlay: OverlayFile, piece: PartialBlock, bytes: Buffer): Promise<void> {
    const state = overlay.map.get(piece.block);
    if (state === BLOCK_DATA) return overlay.writeData(piece.start, bytes);
    const blockStart = piece.block * this.#blockSize;
    const block = Buffer.allocUnsafe(Math.min(blockStart + this.#blockSize, this.#size) - blockStart);
    if (state === BLOCK_BASE) await this.#base.read(blockStart, block, this.#baseGuard);
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
