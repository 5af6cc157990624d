import t from 'tap';
import { blockCount, blockOf, blockSpan, roundDown, roundUp, splitRange } from '../../lib/block/ranges.js';

t.test('rounding and block indexes', async (t) => {
  const cases: [number, number, number, number][] = [
    // n, m, roundUp, roundDown
    [0, 512, 0, 0],
    [1, 512, 512, 0],
    [511, 512, 512, 0],
    [512, 512, 512, 512],
    [513, 512, 1024, 512],
  ];
  for (const [n, m, up, down] of cases) {
    t.equal(roundUp(n, m), up, `roundUp(${n}, ${m})`);
    t.equal(roundDown(n, m), down, `roundDown(${n}, ${m})`);
  }
  t.equal(blockOf(0, 4096), 0);
  t.equal(blockOf(4095, 4096), 0);
  t.equal(blockOf(4096, 4096), 1);
  t.equal(blockOf(2 ** 40 + 1, 4096), 2 ** 28, 'beyond 32 bits');
  t.equal(blockCount(0, 4096), 0);
  t.equal(blockCount(1, 4096), 1);
  t.equal(blockCount(8192, 4096), 2);
  t.equal(blockCount(8193, 4096), 3);
  t.same(blockSpan(4095, 2, 4096), [0, 1]);
  t.same(blockSpan(4096, 4096, 4096), [1, 1]);
});

t.test('splitRange into head, body and tail', async (t) => {
  const B = 100;
  // [offset, length, size, head [start, end] | null, body [first, count, start, end] | null, tail [start, end] | null]
  type Case = [string, number, number, number, number[] | null, number[] | null, number[] | null];
  const cases: Case[] = [
    ['empty', 50, 0, Infinity, null, null, null],
    ['one whole block', 100, 100, Infinity, null, [1, 1, 100, 200], null],
    ['many whole blocks', 0, 300, Infinity, null, [0, 3, 0, 300], null],
    ['inside one block', 110, 20, Infinity, [110, 130], null, null],
    ['from a boundary, short', 100, 20, Infinity, null, null, [100, 120]],
    ['to a boundary, short', 180, 20, Infinity, [180, 200], null, null],
    ['two partial blocks', 150, 100, Infinity, [150, 200], null, [200, 250]],
    ['head body tail', 150, 300, Infinity, [150, 200], [2, 2, 200, 400], [400, 450]],
    ['body and tail', 200, 250, Infinity, null, [2, 2, 200, 400], [400, 450]],
    ['head and body', 150, 250, Infinity, [150, 200], [2, 2, 200, 400], null],
    ['ends at a partial device end', 200, 50, 250, null, [2, 1, 200, 250], null],
    ['whole device with a partial last block', 0, 250, 250, null, [0, 3, 0, 250], null],
    ['unaligned start to a partial device end', 210, 40, 250, [210, 250], null, null],
    ['head then partial last block whole', 150, 100, 250, [150, 200], [2, 1, 200, 250], null],
    ['short of a partial device end', 200, 40, 250, null, null, [200, 240]],
  ];
  for (const [name, offset, length, size, head, body, tail] of cases) {
    const s = splitRange(offset, length, B, size);
    t.same(s.head && [s.head.start, s.head.end], head, `${name}: head`);
    t.same(s.body && [s.body.first, s.body.count, s.body.start, s.body.end], body, `${name}: body`);
    t.same(s.tail && [s.tail.start, s.tail.end], tail, `${name}: tail`);
    if (s.head) t.equal(s.head.block, Math.floor(s.head.start / B), `${name}: head block`);
    if (s.tail) t.equal(s.tail.block, Math.floor(s.tail.start / B), `${name}: tail block`);
  }
});

t.test('splitRange pieces tile the range exactly', async (t) => {
  for (let offset = 0; offset < 300; offset += 7) {
    for (let length = 1; length < 350; length += 13) {
      const s = splitRange(offset, length, 64);
      const pieces = [s.head, s.body, s.tail].filter((p) => p !== undefined);
      let pos = offset;
      for (const p of pieces) {
        if (p.start !== pos) t.fail(`gap at ${pos} for (${offset}, ${length})`);
        pos = p.end;
      }
      if (pos !== offset + length) t.fail(`(${offset}, ${length}) ends at ${pos}`);
    }
  }
  t.pass('tiles');
});
