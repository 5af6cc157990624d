// Pure block arithmetic: split a byte range into an unaligned head, an aligned body of whole
// blocks and an unaligned tail (nbdkit cow.c's split). No I/O, no state.
//
// The device end counts as a block boundary: when the image size is not a multiple of the block
// size, the last block is partial, and a range that ends exactly at `size` covers it whole.

/** A part of one block: absolute byte range [start, end) inside block `block`. */
export interface PartialBlock {
  readonly block: number;
  readonly start: number;
  readonly end: number;
}

/** Whole blocks [first, first + count), bytes [start, end). */
export interface WholeBlocks {
  readonly first: number;
  readonly count: number;
  readonly start: number;
  readonly end: number;
}

export interface SplitRange {
  readonly head: PartialBlock | undefined;
  readonly body: WholeBlocks | undefined;
  readonly tail: PartialBlock | undefined;
}

/** Round `n` up to a multiple of `m`. */
export function roundUp(n: number, m: number): number {
  return Math.ceil(n / m) * m;
}

/** Round `n` down to a multiple of `m`. */
export function roundDown(n: number, m: number): number {
  return Math.floor(n / m) * m;
}

/** The block holding byte `offset`. */
export function blockOf(offset: number, blockSize: number): number {
  return Math.floor(offset / blockSize);
}

/** Number of blocks needed for `size` bytes (the last may be partial). */
export function blockCount(size: number, blockSize: number): number {
  return Math.ceil(size / blockSize);
}

/** First and last block touched by a non-empty range. */
export function blockSpan(offset: number, length: number, blockSize: number): [number, number] {
  return [blockOf(offset, blockSize), blockOf(offset + length - 1, blockSize)];
}

/**
 * Split [offset, offset + length) into head, body and tail. `size` is the device size: a range
 * ending there ends on a block boundary. Head and tail are partial blocks needing a
 * read-modify-write; a range inside one block yields only a head (or only a tail when it starts
 * on a boundary).
 */
export function splitRange(offset: number, length: number, blockSize: number, size = Infinity): SplitRange {
  const end = offset + length;
  if (length <= 0) return { head: undefined, body: undefined, tail: undefined };
  const bodyStart = roundUp(offset, blockSize);
  const bodyEnd = end === size ? end : roundDown(end, blockSize);
  if (bodyStart > bodyEnd) {
    // Both ends inside the same block.
    return { head: { block: blockOf(offset, blockSize), start: offset, end }, body: undefined, tail: undefined };
  }
  const head = offset < bodyStart ? { block: blockOf(offset, blockSize), start: offset, end: bodyStart } : undefined;
  const tail = bodyEnd < end ? { block: blockOf(bodyEnd, blockSize), start: bodyEnd, end } : undefined;
  const body =
    bodyStart < bodyEnd
      ? {
          first: bodyStart / blockSize,
          count: Math.ceil((bodyEnd - bodyStart) / blockSize),
          start: bodyStart,
          end: bodyEnd,
        }
      : undefined;
  return { head, body, tail };
}
