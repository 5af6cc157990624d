import t from 'tap';
import {
  Bitmap,
  BLOCK_BASE,
  BLOCK_DATA,
  BLOCK_ZERO,
  type BlockState,
  MAP_PAGE_SIZE,
  mapBytesFor,
} from '../../lib/block/bitmap.js';
import { randomInt, seededRandom } from './helpers.js';

t.test('bit order: block b at bits 2*(b&3) of byte b>>2', async (t) => {
  const map = new Bitmap(8);
  map.set(0, BLOCK_DATA);
  map.set(3, BLOCK_ZERO);
  map.set(5, BLOCK_DATA);
  t.same(map.buffer, Buffer.from([0b10_00_00_01, 0b00_00_01_00]));
  t.equal(map.get(0), BLOCK_DATA);
  t.equal(map.get(1), BLOCK_BASE);
  t.equal(map.get(3), BLOCK_ZERO);
  map.set(3, BLOCK_BASE);
  t.equal(map.buffer[0], 0b01);
  t.equal(mapBytesFor(0), 0);
  t.equal(mapBytesFor(1), 1);
  t.equal(mapBytesFor(4), 1);
  t.equal(mapBytesFor(5), 2);
});

t.test('setRange matches setting one block at a time', async (t) => {
  // [first, count] on a 40-block map: inside a byte, across bytes, whole bytes, to the end.
  const cases: [number, number][] = [
    [0, 1],
    [1, 2],
    [3, 2],
    [0, 4],
    [2, 9],
    [4, 8],
    [5, 30],
    [0, 40],
    [37, 3],
    [39, 1],
    [6, 0],
  ];
  for (const [first, count] of cases) {
    for (const state of [BLOCK_DATA, BLOCK_ZERO] as BlockState[]) {
      const fast = new Bitmap(40);
      const slow = new Bitmap(40);
      fast.setRange(0, 40, BLOCK_DATA === state ? BLOCK_ZERO : BLOCK_DATA);
      for (let b = 0; b < 40; b++) slow.set(b, BLOCK_DATA === state ? BLOCK_ZERO : BLOCK_DATA);
      fast.setRange(first, count, state);
      for (let b = first; b < first + count; b++) slow.set(b, state);
      t.same(fast.buffer, slow.buffer, `setRange(${first}, ${count}, ${state})`);
    }
  }
});

t.test('runOf counts equal states, across byte boundaries and up to the limit', async (t) => {
  const map = new Bitmap(40);
  map.setRange(2, 20, BLOCK_DATA); // blocks 2..21 data
  map.setRange(22, 1, BLOCK_ZERO); // block 22 zero
  // [start, limit, expected]
  const cases: [number, number, number][] = [
    [0, 100, 2], // base 0..1
    [1, 100, 1],
    [2, 100, 20], // crosses bytes 0..5
    [3, 100, 19],
    [4, 100, 18], // byte aligned start
    [4, 5, 5], // limit inside the run
    [2, 1, 1],
    [21, 100, 1],
    [22, 100, 1],
    [23, 100, 17], // base to the end of the map
    [39, 100, 1],
    [23, 0, 0],
  ];
  for (const [start, limit, expected] of cases) t.equal(map.runOf(start, limit), expected, `runOf(${start}, ${limit})`);
});

t.test('runOf agrees with a naive scan on random maps', async (t) => {
  const rand = seededRandom(42);
  for (let round = 0; round < 200; round++) {
    const blocks = 1 + randomInt(rand, 70);
    const map = new Bitmap(blocks);
    for (let i = 0; i < 6; i++) {
      const first = randomInt(rand, blocks);
      map.setRange(first, randomInt(rand, blocks - first + 1), randomInt(rand, 3) as BlockState);
    }
    const start = randomInt(rand, blocks);
    const limit = 1 + randomInt(rand, blocks);
    let naive = 1;
    while (naive < limit && start + naive < blocks && map.get(start + naive) === map.get(start)) naive++;
    if (map.runOf(start, limit) !== naive) t.fail(`round ${round}: runOf(${start}, ${limit}) != ${naive}`);
  }
  t.pass('agrees');
});

t.test('countState counts blocks in a state, inside a byte, across bytes and by whole bytes', async (t) => {
  const map = new Bitmap(40);
  map.setRange(2, 20, BLOCK_DATA); // blocks 2..21 data
  map.setRange(9, 3, BLOCK_ZERO); // blocks 9..11 zero
  map.set(39, BLOCK_DATA);
  // [first, count, data, zero, base]
  const cases: [number, number, number, number, number][] = [
    [0, 40, 18, 3, 19],
    [0, 1, 0, 0, 1],
    [2, 1, 1, 0, 0],
    [1, 2, 1, 0, 1], // inside byte 0
    [3, 6, 6, 0, 0], // across bytes 0..2
    [4, 8, 5, 3, 0], // whole bytes 1..2
    [8, 16, 11, 3, 2],
    [22, 18, 1, 0, 17], // to the end of the map
    [39, 1, 1, 0, 0],
    [5, 0, 0, 0, 0],
  ];
  for (const [first, count, data, zero, base] of cases) {
    t.same(
      ([BLOCK_DATA, BLOCK_ZERO, BLOCK_BASE] as BlockState[]).map((state) => map.countState(first, count, state)),
      [data, zero, base],
      `countState(${first}, ${count})`,
    );
  }
  t.throws(() => map.countState(30, 11, BLOCK_DATA), RangeError, 'past the end');
  t.throws(() => map.countState(0, 1, 3 as BlockState), RangeError, 'invalid state');
});

t.test('countState agrees with a naive scan on random maps', async (t) => {
  const rand = seededRandom(7);
  for (let round = 0; round < 200; round++) {
    const blocks = 1 + randomInt(rand, 70);
    const map = new Bitmap(blocks);
    for (let i = 0; i < 6; i++) {
      const first = randomInt(rand, blocks);
      map.setRange(first, randomInt(rand, blocks - first + 1), randomInt(rand, 3) as BlockState);
    }
    const first = randomInt(rand, blocks);
    const count = randomInt(rand, blocks - first + 1);
    const state = randomInt(rand, 3) as BlockState;
    let naive = 0;
    for (let b = first; b < first + count; b++) if (map.get(b) === state) naive++;
    if (map.countState(first, count, state) !== naive)
      t.fail(`round ${round}: countState(${first}, ${count}, ${state}) != ${naive}`);
  }
  t.pass('agrees');
});

t.test('dirty pages of the map', async (t) => {
  const blocksPerPage = MAP_PAGE_SIZE * 4;
  const map = new Bitmap(blocksPerPage * 3 + 10, Buffer.alloc(MAP_PAGE_SIZE * 4));
  t.equal(map.dirtyCount, 0);
  map.set(0, BLOCK_DATA);
  map.set(1, BLOCK_DATA);
  map.set(blocksPerPage * 3 + 9, BLOCK_ZERO);
  t.same(map.takeDirtyPages(), [0, 3]);
  t.same(map.takeDirtyPages(), [], 'taking clears');
  map.setRange(blocksPerPage - 1, 2, BLOCK_ZERO);
  t.same(map.takeDirtyPages(), [0, 1], 'a range across a page boundary dirties both');
  map.markPagesDirty([2]);
  t.same(map.takeDirtyPages(), [2]);
});

t.test('bad indexes, states and buffers are refused', async (t) => {
  const map = new Bitmap(5);
  t.throws(() => map.get(5), RangeError);
  t.throws(() => map.get(-1), RangeError);
  t.throws(() => map.setRange(3, 3, BLOCK_DATA), RangeError);
  t.throws(() => map.set(0, 3 as BlockState), RangeError);
  t.throws(() => new Bitmap(9, Buffer.alloc(2)), RangeError);
  t.equal(map.runOf(5, 10), 0);
});

t.test('findInvalid reports state 3', async (t) => {
  const buf = Buffer.from([0b01_10_00_01, 0b00_11_00_00]);
  t.equal(new Bitmap(8, buf).findInvalid(), 6);
  t.equal(new Bitmap(4, Buffer.from([0b01_10_00_01])).findInvalid(), -1);
});
