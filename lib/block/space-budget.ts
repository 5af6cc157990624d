// Overlay space limits (--max-overlay-size, --max-overlay-dir-size): how many bytes of data an
// overlay holds, counted as blocks in state "data" × block size (zero and base blocks cost
// nothing), against its own limit and a total shared by every overlay the server has open.
//
// The device (cow-device.ts) calls take() under its range lock before a request turns blocks
// into "data", with the number of blocks that are not "data" yet, and give() for blocks that
// leave "data" (trim, zero) or that a failed request did not write after all. So `used` is the
// blocks in state "data" plus those a request in flight is about to write. take() is all or
// nothing: it refuses (an ENOSPC-coded error) without changing any count, and a refused
// request then changes nothing. take() and give() are a few integer operations; counting a
// request's blocks reads only its own part of the map, a byte per four blocks (countState).

import { type Bitmap, BLOCK_DATA } from './bitmap.js';
import { codedError } from './coded-error.js';

/** The bytes every open overlay of one overlay directory may hold together. */
export class SpaceBudget {
  readonly limit: number;
  #used = 0;

  constructor(limit: number) {
    this.limit = checkLimit('overlay directory size limit', limit);
  }

  /** Bytes held by the overlays open now (and requests in flight). */
  get used(): number {
    return this.#used;
  }

  /** Whether `bytes` more fit under the limit. */
  fits(bytes: number): boolean {
    return this.#used + bytes <= this.limit;
  }

  /** Count `bytes` more without a check: what an overlay already held when it was opened. */
  add(bytes: number): void {
    this.#used += bytes;
  }

  /** Count `bytes` less. */
  remove(bytes: number): void {
    this.#used -= bytes;
  }
}

/** The space limits a device enforces; at least one of them is set. */
export interface SpaceLimits {
  /** Most bytes one overlay may hold; Infinity for no limit of its own. */
  readonly perOverlay: number;
  /** The budget shared with every other overlay of the directory, if there is one. */
  readonly shared?: SpaceBudget;
}

/** The limits for a server's options, or undefined when none is set (nothing is counted). */
export function spaceLimits(maxOverlaySize?: number, maxOverlayDirSize?: number): SpaceLimits | undefined {
  if (maxOverlaySize === undefined && maxOverlayDirSize === undefined) return undefined;
  const perOverlay = maxOverlaySize === undefined ? Infinity : checkLimit('overlay size limit', maxOverlaySize);
  return maxOverlayDirSize === undefined ? { perOverlay } : { perOverlay, shared: new SpaceBudget(maxOverlayDirSize) };
}

function checkLimit(what: string, bytes: number): number {
  if (!Number.isSafeInteger(bytes) || bytes < 1) throw new RangeError(`${what} ${bytes} is not a positive number of bytes`);
  return bytes;
}

/** One overlay's account: its data blocks, under its own limit and the shared budget. */
export class OverlaySpace {
  readonly #name: string;
  readonly #blockSize: number;
  readonly #limit: number;
  #shared: SpaceBudget | undefined;
  #used = 0;

  /** An overlay named `name` (for messages) already holding `dataBlocks` blocks of `blockSize`. */
  constructor(name: string, limits: SpaceLimits, blockSize: number, dataBlocks: number) {
    this.#name = name;
    this.#blockSize = blockSize;
    this.#limit = limits.perOverlay;
    this.#shared = limits.shared;
    this.#used = dataBlocks * blockSize;
    // Already on disk: counted even past a limit, which then refuses every new data block.
    this.#shared?.add(this.#used);
  }

  /** Bytes this overlay holds (and requests in flight are about to write). */
  get used(): number {
    return this.#used;
  }

  /** Count `blocks` more data blocks, or throw an ENOSPC-coded error and count nothing. */
  take(blocks: number): void {
    if (blocks <= 0) return;
    const bytes = blocks * this.#blockSize;
    const shared = this.#shared;
    if (this.#used + bytes > this.#limit) throw this.#refusal(bytes, `it holds ${this.#used} of its ${this.#limit}`);
    if (shared !== undefined && !shared.fits(bytes)) {
      throw this.#refusal(bytes, `the overlay directory holds ${shared.used} of its ${shared.limit}`);
    }
    this.#used += bytes;
    shared?.add(bytes);
  }

  /** Count `blocks` fewer data blocks. */
  give(blocks: number): void {
    if (blocks <= 0) return;
    const bytes = blocks * this.#blockSize;
    this.#used -= bytes;
    this.#shared?.remove(bytes);
  }

  /** A request that makes `taking` blocks "data" and frees `freeing`: only the difference is checked. */
  exchange(taking: number, freeing: number): void {
    if (taking > freeing) this.take(taking - freeing);
    else this.give(freeing - taking);
  }

  /** take() the blocks of [first, first + count) not in state "data" in `map` yet. */
  takeForData(map: Bitmap, first: number, count: number): number {
    const blocks = count - map.countState(first, count, BLOCK_DATA);
    this.take(blocks);
    return blocks;
  }

  /** After a failed request that took them all: give() the blocks of the range it left short of "data". */
  giveUnwritten(map: Bitmap, first: number, count: number): void {
    this.give(count - map.countState(first, count, BLOCK_DATA));
  }

  /** The overlay is closed (deleted, or kept on disk): its bytes leave the shared budget. Idempotent. */
  release(): void {
    this.#shared?.remove(this.#used);
    this.#shared = undefined;
  }

  #refusal(bytes: number, state: string): Error {
    return codedError('ENOSPC', `overlay ${this.#name}: no room for ${bytes} more bytes of data (${state} bytes allowed)`);
  }
}
