// Block-state map: 2 bits per block over a Buffer, plus which 4 KiB pages of it changed since
// they were last persisted. No I/O; overlay-file.ts writes the pages.
//
//   state  bits  meaning
//   0      00    base: the base image supplies the block
//   1      01    data: the overlay holds the block's bytes
//   2      10    zero: the block reads as zeros, nothing stored
//   3      11    invalid (a corrupt map)
//
// Block b lives in byte b >> 2 at bit shift 2 * (b & 3): the first block of a byte is in its
// least significant bits. A byte of four equal states is state * 0x55, which runOf() and
// setRange() use to work a byte (four blocks) at a time.

export const BLOCK_BASE = 0;
export const BLOCK_DATA = 1;
export const BLOCK_ZERO = 2;
export type BlockState = typeof BLOCK_BASE | typeof BLOCK_DATA | typeof BLOCK_ZERO;

/** Granularity of dirty tracking and of map writes. */
export const MAP_PAGE_SIZE = 4096;

/** For each byte value, how many of its four 2-bit fields are 00 (countState() XORs first). */
const ZERO_FIELDS = Uint8Array.from({ length: 256 }, (_, byte) => {
  let n = 0;
  for (let shift = 0; shift < 8; shift += 2) if (((byte >> shift) & 3) === 0) n++;
  return n;
});

/** Bytes of map needed for `blocks` blocks. */
export function mapBytesFor(blocks: number): number {
  return Math.ceil(blocks / 4);
}

function checkState(state: number): asserts state is BlockState {
  if (state !== BLOCK_BASE && state !== BLOCK_DATA && state !== BLOCK_ZERO) {
    throw new RangeError(`invalid block state ${state}`);
  }
}

export class Bitmap {
  readonly #buf: Buffer;
  readonly #blocks: number;
  /** Indexes of pages changed since the last takeDirtyPages(). */
  readonly #dirty = new Set<number>();

  /** A map of `blocks` blocks over `buf` (all zero = all base), or a fresh zeroed buffer. */
  constructor(blocks: number, buf: Buffer = Buffer.alloc(mapBytesFor(blocks))) {
    if (buf.length < mapBytesFor(blocks)) {
      throw new RangeError(`map buffer of ${buf.length} bytes is too small for ${blocks} blocks`);
    }
    this.#blocks = blocks;
    this.#buf = buf;
  }

  get blocks(): number {
    return this.#blocks;
  }

  /** The backing buffer (persisted as is). */
  get buffer(): Buffer {
    return this.#buf;
  }

  get(block: number): BlockState {
    this.#check(block, 1);
    return ((this.#byte(block >> 2) >> ((block & 3) * 2)) & 3) as BlockState;
  }

  set(block: number, state: BlockState): void {
    this.setRange(block, 1, state);
  }

  /** Set blocks [first, first + count) to `state`. */
  setRange(first: number, count: number, state: BlockState): void {
    checkState(state);
    if (count <= 0) return;
    this.#check(first, count);
    const end = first + count;
    let b = first;
    for (; b < end && (b & 3) !== 0; b++) this.#setOne(b, state);
    const wholeEnd = end - (end & 3);
    if (b < wholeEnd) {
      this.#buf.fill(state * 0x55, b >> 2, wholeEnd >> 2);
      b = wholeEnd;
    }
    for (; b < end; b++) this.#setOne(b, state);
    this.#markDirty(first >> 2, (end - 1) >> 2);
  }

  /** How many consecutive blocks from `start` (at most `limit`) share the state of `start`. */
  runOf(start: number, limit: number): number {
    const max = Math.min(limit, this.#blocks - start);
    if (max <= 0) return 0;
    const state = this.get(start);
    const end = start + max;
    let b = start + 1;
    for (; b < end && (b & 3) !== 0; b++) if (this.get(b) !== state) return b - start;
    const pattern = state * 0x55;
    while (b + 4 <= end && this.#byte(b >> 2) === pattern) b += 4;
    for (; b < end; b++) if (this.get(b) !== state) return b - start;
    return max;
  }

  /** How many of blocks [first, first + count) are in `state`: four blocks per byte (ZERO_FIELDS). */
  countState(first: number, count: number, state: BlockState): number {
    checkState(state);
    if (count <= 0) return 0;
    this.#check(first, count);
    const end = first + count;
    let n = 0;
    let b = first;
    for (; b < end && (b & 3) !== 0; b++) if (this.get(b) === state) n++;
    const wholeEnd = end - (end & 3);
    if (b < wholeEnd) {
      const pattern = state * 0x55;
      // A field equal to `state` is 00 after the XOR; the index is a byte, so in the table.
      for (let i = b >> 2; i < wholeEnd >> 2; i++) n += ZERO_FIELDS[this.#byte(i) ^ pattern] as number;
      b = wholeEnd;
    }
    for (; b < end; b++) if (this.get(b) === state) n++;
    return n;
  }

  /** The first block holding the invalid state 3, or -1. */
  findInvalid(): number {
    for (let i = 0; i < mapBytesFor(this.#blocks); i++) {
      const byte = this.#byte(i);
      if ((byte & (byte >> 1) & 0x55) === 0) continue;
      for (let b = i * 4; b < Math.min(i * 4 + 4, this.#blocks); b++) if (this.get(b) > BLOCK_ZERO) return b;
    }
    return -1;
  }

  /** Number of dirty pages. */
  get dirtyCount(): number {
    return this.#dirty.size;
  }

  /** Sorted indexes of the pages changed since the last call, and forget them. */
  takeDirtyPages(): number[] {
    const pages = [...this.#dirty].sort((a, b) => a - b);
    this.#dirty.clear();
    return pages;
  }

  /** Mark pages dirty again (a write of them failed). */
  markPagesDirty(pages: readonly number[]): void {
    for (const p of pages) this.#dirty.add(p);
  }

  #byte(i: number): number {
    // In range: callers checked the block index against #blocks.
    return this.#buf[i] as number;
  }

  #setOne(block: number, state: BlockState): void {
    const i = block >> 2;
    const shift = (block & 3) * 2;
    this.#buf[i] = (this.#byte(i) & ~(3 << shift)) | (state << shift);
  }

  #markDirty(firstByte: number, lastByte: number): void {
    const last = Math.floor(lastByte / MAP_PAGE_SIZE);
    for (let p = Math.floor(firstByte / MAP_PAGE_SIZE); p <= last; p++) this.#dirty.add(p);
  }

  #check(first: number, count: number): void {
    if (!Number.isInteger(first) || first < 0 || first + count > this.#blocks) {
      throw new RangeError(`blocks [${first}, ${first + count}) outside a map of ${this.#blocks} blocks`);
    }
  }
}
