import t from 'tap';
import { BLOCK_BASE, BLOCK_DATA, BLOCK_ZERO } from '../../lib/block/bitmap.js';
import type { WholeBlocks } from '../../lib/block/ranges.js';
import { hasZeroBlock, isZeroRange, WritePayload } from '../../lib/block/write-payload.js';
import { patternBytes } from './helpers.js';

/** Whole blocks from block `first`, bytes [start, end), of 512 bytes. */
function blocks(first: number, start: number, end: number): WholeBlocks {
  return { first, count: Math.ceil((end - start) / 512), start, end };
}

/** `bytes` cut into pieces of the given lengths (the rest in the last piece). */
function cut(bytes: Buffer, lengths: readonly number[]): Buffer[] {
  const out: Buffer[] = [];
  let at = 0;
  for (const length of lengths) {
    out.push(bytes.subarray(at, at + length));
    at += length;
  }
  out.push(bytes.subarray(at));
  return out;
}

t.test('isZeroRange: every byte, including the first and the last', async (t) => {
  const buf = Buffer.alloc(100);
  t.equal(isZeroRange(buf, 0, 100), true);
  t.equal(isZeroRange(buf, 10, 10), true, 'an empty range');
  for (const at of [0, 1, 50, 98, 99]) {
    buf[at] = 1;
    t.equal(isZeroRange(buf, 0, 100), false, `a one at ${at}`);
    t.equal(isZeroRange(buf, at + 1, 100), true, 'and none after it');
    buf[at] = 0;
  }
  buf[0] = 5;
  buf[99] = 5;
  t.equal(isZeroRange(buf, 1, 99), true, 'only the range counts');
});

t.test('hasZeroBlock: whole blocks only, the last one may be short', async (t) => {
  const buf = patternBytes(10_000);
  t.equal(hasZeroBlock(buf, 0, 10_000, 4096), false);
  buf.fill(0, 8192, 10_000);
  t.equal(hasZeroBlock(buf, 0, 10_000, 4096), true, 'the short last block');
  t.equal(hasZeroBlock(buf, 0, 8192, 4096), false);
  buf.fill(0, 4096, 8191);
  t.equal(hasZeroBlock(buf, 0, 8192, 4096), false, 'all but the last byte');
  buf[8191] = 0;
  t.equal(hasZeroBlock(buf, 0, 8192, 4096), true);
});

t.test('pieces and bytes address the chunks by device offset', async (t) => {
  const bytes = patternBytes(1000);
  const payload = new WritePayload(5000, cut(bytes, [10, 0, 300, 1]));
  t.equal(payload.length, 1000);
  t.same(Buffer.concat(payload.pieces(5005, 5400)), bytes.subarray(5, 400));
  t.equal(payload.pieces(5005, 5400).length, 4, 'the empty chunk is skipped, not the others');
  t.same(payload.bytes(5020, 5100), bytes.subarray(20, 100));
  t.equal(payload.bytes(5020, 5100).buffer, bytes.buffer, 'inside one chunk: no copy');
  t.same(payload.bytes(5000, 6000), bytes);
  t.same(payload.bytes(5400, 5401), bytes.subarray(400, 401), 'backwards after a later read');
});

t.test('classify: runs of zero, base and data blocks; null when all are data', async (t) => {
  const bs = 512;
  const base = patternBytes(8 * bs, 2);
  const data = patternBytes(8 * bs, 3);
  // Blocks: 0 data, 1-2 zero, 3 base, 4 data, 5 base, 6 zero but for its last byte, 7 zero.
  data.fill(0, bs, 3 * bs);
  base.copy(data, 3 * bs, 3 * bs, 4 * bs);
  base.copy(data, 5 * bs, 5 * bs, 6 * bs);
  data.fill(0, 6 * bs, 7 * bs - 1);
  data.fill(0, 7 * bs);
  const runs = (payload: WritePayload, withBase: boolean) =>
    payload.classify(blocks(10, 10 * bs, 18 * bs), bs, withBase ? base : undefined);
  for (const chunks of [[data], cut(data, [700, 1, 2000, 300]), cut(data, Array(40).fill(100))]) {
    const payload = new WritePayload(10 * bs, chunks);
    t.same(
      runs(payload, true),
      [
        { first: 10, count: 1, state: BLOCK_DATA },
        { first: 11, count: 2, state: BLOCK_ZERO },
        { first: 13, count: 1, state: BLOCK_BASE },
        { first: 14, count: 1, state: BLOCK_DATA },
        { first: 15, count: 1, state: BLOCK_BASE },
        { first: 16, count: 1, state: BLOCK_DATA },
        { first: 17, count: 1, state: BLOCK_ZERO },
      ],
      `${chunks.length} chunk(s), compared with the base`,
    );
    t.same(
      runs(payload, false),
      [
        { first: 10, count: 1, state: BLOCK_DATA },
        { first: 11, count: 2, state: BLOCK_ZERO },
        { first: 13, count: 4, state: BLOCK_DATA },
        { first: 17, count: 1, state: BLOCK_ZERO },
      ],
      `${chunks.length} chunk(s), zeros only`,
    );
  }
  const plain = new WritePayload(0, [patternBytes(4 * bs, 4)]);
  t.equal(plain.classify(blocks(0, 0, 4 * bs), bs), null, 'all data');
  t.equal(plain.classify(blocks(0, 0, 4 * bs), bs, base), null, 'all data, none equal to the base');
  const zeros = new WritePayload(0, [Buffer.alloc(3 * bs + 100)]);
  t.same(zeros.classify(blocks(0, 0, 3 * bs + 100), bs), [{ first: 0, count: 4, state: BLOCK_ZERO }], 'a short last block too');
  t.same(
    new WritePayload(bs - 100, [Buffer.alloc(100), Buffer.alloc(bs, 1)]).classify(blocks(1, bs, 2 * bs), bs),
    null,
    'blocks start where the caller says, not at the payload start',
  );
});
