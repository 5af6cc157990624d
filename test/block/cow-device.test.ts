import { existsSync, readFileSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { type BaseImage, openBase } from '../../lib/block/base-image.js';
import { CowDevice } from '../../lib/block/cow-device.js';
import type { Extent } from '../../lib/block/device.js';
import { decodeOverlayHeader } from '../../lib/block/overlay-header.js';
import { SpaceBudget } from '../../lib/block/space-budget.js';
import { makeBase, patternBytes, randomInt, seededRandom, sha256File } from './helpers.js';

const W = { fua: false };
const Z = { fua: false, noHole: false };

interface Setup {
  base: BaseImage;
  basePath: string;
  model: Buffer;
  dev: CowDevice;
  overlayPath: string;
}

/** A base of `size` pattern bytes, a device over it, and a model of the expected contents. */
async function setup(t: Test, size: number, blockSize: number): Promise<Setup> {
  const dir = t.testdir();
  const { path, bytes } = makeBase(dir, size);
  const base = await openBase(path);
  const overlayPath = join(dir, 'overlay.cow');
  const dev = new CowDevice({ base, blockSize, overlayPath });
  t.teardown(async () => {
    await dev.close();
    await base.close();
  });
  return { base, basePath: path, model: Buffer.from(bytes), dev, overlayPath };
}

async function readAll(dev: CowDevice): Promise<Buffer> {
  const buf = Buffer.alloc(dev.size, 0xee);
  await dev.read(0, buf);
  return buf;
}

/** Check the whole device equals the model, reporting the first differing byte. */
async function checkModel(t: Test, dev: CowDevice, model: Buffer, what: string): Promise<void> {
  const got = await readAll(dev);
  if (got.equals(model)) return void t.pass(what);
  let i = 0;
  while (got[i] === model[i]) i++;
  t.fail(`${what}: first difference at byte ${i} (got ${got[i]}, want ${model[i]})`);
}

function states(extents: Extent[]): string {
  return extents.map((e) => `${e.state}:${e.length}`).join(' ');
}

t.test('no overlay until the first write; deleted at close', async (t) => {
  const s = await setup(t, 64 * 1024, 4096);
  const buf = Buffer.alloc(5000);
  await s.dev.read(100, buf);
  t.ok(buf.equals(s.model.subarray(100, 5100)));
  t.same(await s.dev.extents(10, 100_000, 8), [{ length: 64 * 1024 - 10, state: 'base', depth: 2 }]);
  await s.dev.flush();
  await s.dev.cache(0, 64 * 1024);
  t.notOk(existsSync(s.overlayPath), 'reads, extents, flush and cache create nothing');
  t.equal(s.dev.hasOverlay, false);
  await s.dev.write(4096, Buffer.alloc(4096, 1), W);
  t.ok(existsSync(s.overlayPath), 'the first write creates the overlay');
  await s.dev.close();
  t.notOk(existsSync(s.overlayPath), 'close deletes it');
  await s.dev.close();
  await t.rejects(s.dev.read(0, Buffer.alloc(1)), { code: 'ESHUTDOWN' });
  await t.rejects(s.dev.write(0, Buffer.alloc(1), W), { code: 'ESHUTDOWN' });
});

t.test('a read-only session closes without an overlay', async (t) => {
  const s = await setup(t, 8192, 4096);
  await s.dev.read(0, Buffer.alloc(8192));
  await s.dev.close();
  t.notOk(existsSync(s.overlayPath));
});

t.test('aligned and unaligned writes read back; base unchanged', async (t) => {
  const s = await setup(t, 64 * 1024, 4096);
  const before = sha256File(s.basePath);
  const writes: [number, number][] = [
    [0, 4096], // one whole block
    [8192, 3 * 4096], // aligned body of three blocks
    [5000, 100], // inside one base block: RMW
    [4096 * 6 - 10, 30], // across a block boundary, both partial
    [4096 * 9 + 1, 4096 * 3], // head, body, tail
    [100, 50], // partial write to a block already holding data
  ];
  let seed = 10;
  for (const [offset, length] of writes) {
    const data = patternBytes(length, seed++);
    await s.dev.write(offset, data, W);
    data.copy(s.model, offset);
  }
  await checkModel(t, s.dev, s.model, 'contents match the model');
  t.equal(sha256File(s.basePath), before, 'base sha256 unchanged');
  const ext = await s.dev.extents(0, 64 * 1024, 100);
  // Blocks: 0 data, 1 data (RMW at 5000), 2-4 data, 5 data (boundary write), 6 data, 7-8 base,
  // 9-12 data, 13-15 base.
  t.same(ext, [
    { length: 7 * 4096, state: 'data', depth: 1 },
    { length: 2 * 4096, state: 'base', depth: 2 },
    { length: 4 * 4096, state: 'data', depth: 1 },
    { length: 3 * 4096, state: 'base', depth: 2 },
  ]);
});

t.test('writev: whole blocks go in as pieces, anything else is joined first', async (t) => {
  const s = await setup(t, 64 * 1024, 4096);
  /** `length` bytes of pattern `seed`, cut into pieces of uneven sizes. */
  const inPieces = (length: number, seed: number): Buffer[] => {
    const bytes = patternBytes(length, seed);
    const out: Buffer[] = [];
    for (let at = 0, cut = 1; at < length; at += cut, cut = cut * 3 + 5) out.push(bytes.subarray(at, Math.min(length, at + cut)));
    return out;
  };
  const writes: [number, number][] = [
    [4096, 4 * 4096], // whole blocks: pwritev
    [4096 * 8 + 100, 4096], // head and tail: joined, read-modify-write
    [4096 * 12, 4096 * 4], // whole blocks up to the end of the device
  ];
  let seed = 40;
  for (const [offset, length] of writes) {
    const pieces = inPieces(length, seed++);
    await s.dev.writev(offset, pieces, W);
    Buffer.concat(pieces).copy(s.model, offset);
  }
  await s.dev.writev(0, inPieces(4096, seed), { fua: true });
  Buffer.concat(inPieces(4096, seed)).copy(s.model, 0);
  await checkModel(t, s.dev, s.model, 'contents match the model');
  t.equal(states(await s.dev.extents(0, 64 * 1024, 100)), 'data:20480 base:12288 data:8192 base:8192 data:16384');
});

t.test('a write into ready data blocks is done before write() returns; others take the queue', async (t) => {
  const s = await setup(t, 64 * 1024, 4096);
  await s.dev.write(0, Buffer.alloc(8192, 1), W); // creates the overlay; blocks 0-1 hold data
  const dataAt = (offset: number, length: number): Buffer => {
    const file = readFileSync(s.overlayPath);
    const { dataOffset } = decodeOverlayHeader(file.subarray(0, 128));
    const out = Buffer.alloc(length); // past the end of the sparse file: zeros
    file.copy(out, 0, Math.min(file.length, dataOffset + offset), Math.min(file.length, dataOffset + offset + length));
    return out;
  };
  const inPlace = s.dev.write(100, Buffer.alloc(50, 2), W);
  t.same(dataAt(100, 50), Buffer.alloc(50, 2), 'an in-place partial write is in the file at once');
  const whole = s.dev.write(4096 * 4, Buffer.alloc(4096, 3), W);
  t.same(dataAt(4096 * 4, 4096), Buffer.alloc(4096, 3), 'so is a whole-block write');
  await Promise.all([inPlace, whole]);
  t.same(states(await s.dev.extents(0, 64 * 1024, 10)), 'data:8192 base:8192 data:4096 base:45056');

  // A partial write into a base block needs a read-modify-write: not done synchronously, and
  // a whole-block write overlapping it waits for it instead of slipping past.
  const rmw = s.dev.write(4096 * 8 + 10, Buffer.alloc(10, 4), W);
  const after = s.dev.write(4096 * 8, Buffer.alloc(4096, 5), W);
  t.same(dataAt(4096 * 8, 4096), Buffer.alloc(4096), 'neither is in the file yet');
  await Promise.all([rmw, after]);
  const got = Buffer.alloc(4096);
  await s.dev.read(4096 * 8, got);
  t.same(got, Buffer.alloc(4096, 5), 'the later write wins whole');
});

t.test('reads spanning data, zero and base runs, at unaligned offsets', async (t) => {
  const s = await setup(t, 32 * 1024, 1024);
  await s.dev.write(2048, Buffer.alloc(2048, 0xaa), W); // blocks 2-3 data
  Buffer.alloc(2048, 0xaa).copy(s.model, 2048);
  await s.dev.trim(4096, 3072, W); // blocks 4-6 zero
  s.model.fill(0, 4096, 7168);
  await s.dev.zero(9000, 3000, Z); // 9000..12000: partial 8, whole 9-10, partial 11
  s.model.fill(0, 9000, 12000);
  for (let offset = 0; offset < 14000; offset += 333) {
    for (const length of [1, 700, 1024, 5000]) {
      const buf = Buffer.alloc(length, 0xee);
      await s.dev.read(offset, buf);
      if (!buf.equals(s.model.subarray(offset, offset + length))) t.fail(`read(${offset}, ${length})`);
    }
  }
  t.pass('all reads match');
  t.same(await s.dev.extents(1500, 20000, 100), [
    { length: 548, state: 'base', depth: 2 },
    { length: 2048, state: 'data', depth: 1 },
    { length: 3072, state: 'zero', depth: 1 },
    { length: 1024, state: 'base', depth: 2 },
    { length: 1024, state: 'data', depth: 1 }, // block 8: zero-filled by RMW
    { length: 2048, state: 'zero', depth: 1 },
    { length: 1024, state: 'data', depth: 1 }, // block 11
    { length: 20000 - 548 - 2048 - 3072 - 1024 - 1024 - 2048 - 1024, state: 'base', depth: 2 },
  ]);
  t.same(
    await s.dev.extents(2100, 4000, 2),
    [
      { length: 1996, state: 'data', depth: 1 },
      { length: 2004, state: 'zero', depth: 1 },
    ],
    'extents start at the offset and stop at its end',
  );
  t.same(
    await s.dev.extents(2100, 20000, 2),
    [
      { length: 1996, state: 'data', depth: 1 },
      { length: 3072, state: 'zero', depth: 1 },
    ],
    'maxExtents stops early',
  );
  t.same(await s.dev.extents(2100, 10, 5), [{ length: 10, state: 'data', depth: 1 }], 'clamped to the request');
});

t.test('trim and zero read as zeros, never as the base', async (t) => {
  const s = await setup(t, 16 * 1024, 4096);
  await s.dev.trim(0, 4096, W); // whole block, fresh
  await s.dev.trim(5000, 100, W); // partial, base block
  await s.dev.write(8192, Buffer.alloc(4096, 7), W);
  await s.dev.zero(8192 + 10, 10, Z); // partial, data block
  await s.dev.zero(12288, 4096, Z); // whole block
  s.model.fill(0, 0, 4096);
  s.model.fill(0, 5000, 5100);
  s.model.fill(7, 8192, 12288);
  s.model.fill(0, 8202, 8212);
  s.model.fill(0, 12288, 16384);
  await checkModel(t, s.dev, s.model, 'zeros where trimmed or zeroed');
  t.same(states(await s.dev.extents(0, 16384, 10)), 'zero:4096 data:8192 zero:4096');
  // Trimming a partial block already in state zero changes nothing.
  await s.dev.trim(100, 10, W);
  t.same(states(await s.dev.extents(0, 4096, 10)), 'zero:4096');
  // A write into a zeroed block RMWs with zeros, not the base.
  await s.dev.write(12288 + 100, Buffer.from('hi'), W);
  s.model.write('hi', 12288 + 100);
  await checkModel(t, s.dev, s.model, 'RMW of a zero block copies zeros');
});

t.test('zero with noHole stores real zeros (state data), in bounded chunks', async (t) => {
  const size = 5 * 1024 * 1024 + 3000;
  const s = await setup(t, size, 4096);
  await s.dev.zero(100, size - 200, { fua: false, noHole: true });
  s.model.fill(0, 100, size - 100);
  await checkModel(t, s.dev, s.model, 'zeros');
  t.same(states(await s.dev.extents(0, size, 10)), `data:${size}`);
  await s.dev.zero(0, 8192, { fua: false, noHole: false });
  t.same(states(await s.dev.extents(0, 12288, 10)), 'zero:8192 data:4096');
});

t.test('an image whose size is not a multiple of the block size', async (t) => {
  const size = 10_000; // blocks 0, 1 whole; block 2 holds 1808 bytes
  const s = await setup(t, size, 4096);
  await s.dev.write(size - 5, Buffer.from('ABCDE'), W); // partial: RMW of the last block
  s.model.write('ABCDE', size - 5);
  await checkModel(t, s.dev, s.model, 'tail write');
  t.same(await s.dev.extents(0, size, 10), [
    { length: 8192, state: 'base', depth: 2 },
    { length: 1808, state: 'data', depth: 1 },
  ]);
  await s.dev.write(8192, Buffer.alloc(1808, 3), W); // the whole last block
  s.model.fill(3, 8192);
  await s.dev.write(4096, Buffer.alloc(size - 4096, 4), W); // body reaching the end
  s.model.fill(4, 4096);
  await checkModel(t, s.dev, s.model, 'whole-last-block writes');
  await s.dev.trim(8192, 1808, W); // the whole last block becomes zero
  s.model.fill(0, 8192);
  await checkModel(t, s.dev, s.model, 'trimmed last block');
  t.same(states(await s.dev.extents(9000, 5000, 10)), 'zero:1000');
  await s.dev.zero(9990, 10, { fua: true, noHole: true });
  await checkModel(t, s.dev, s.model, 'noHole at the end');
  const header = decodeOverlayHeader(readFileSync(s.overlayPath));
  t.ok(statSync(s.overlayPath).size <= header.dataOffset + size, 'nothing stored past the image end');
});

t.test('two concurrent writes to the halves of one fresh block both survive', async (t) => {
  const s = await setup(t, 64 * 1024, 4096);
  await s.dev.trim(8 * 4096, 8 * 4096, W); // blocks 8-15 zero: RMW copies zeros there
  const jobs: Promise<void>[] = [];
  for (let b = 0; b < 16; b++) {
    const lo = Buffer.alloc(2048, 0x10 + b);
    const hi = Buffer.alloc(2048, 0x80 + b);
    jobs.push(s.dev.write(b * 4096, lo, W), s.dev.write(b * 4096 + 2048, hi, W));
    lo.copy(s.model, b * 4096);
    hi.copy(s.model, b * 4096 + 2048);
  }
  await Promise.all(jobs);
  await checkModel(t, s.dev, s.model, 'both halves of every block');
});

t.test('a full-block write racing an RMW never yields a mix', async (t) => {
  const s = await setup(t, 64 * 1024, 4096);
  for (let b = 0; b < 16; b++) {
    const full = Buffer.alloc(4096, 0x40);
    const part = Buffer.alloc(100, 0x41);
    const order = b % 2 === 0;
    await Promise.all(
      order
        ? [s.dev.write(b * 4096 + 1000, part, W), s.dev.write(b * 4096, full, W)]
        : [s.dev.write(b * 4096, full, W), s.dev.write(b * 4096 + 1000, part, W)],
    );
    const got = Buffer.alloc(4096);
    await s.dev.read(b * 4096, got);
    const withPart = Buffer.from(full);
    part.copy(withPart, 1000);
    t.ok(got.equals(full) || got.equals(withPart), `block ${b} is one of the two orders`);
  }
});

t.test('many random concurrent operations agree with an in-memory model', async (t) => {
  const size = 256 * 1024 + 1234;
  const s = await setup(t, size, 4096);
  const rand = seededRandom(20240601);
  for (let round = 0; round < 40; round++) {
    // A batch of operations on disjoint byte ranges that may share blocks, run concurrently.
    const taken: [number, number][] = [];
    const jobs: Promise<void>[] = [];
    for (let i = 0; i < 12; i++) {
      const length = 1 + randomInt(rand, rand() < 0.3 ? 20_000 : 3000);
      const offset = randomInt(rand, size - length + 1);
      if (taken.some(([a, b]) => offset < b && a < offset + length)) continue;
      taken.push([offset, offset + length]);
      const kind = randomInt(rand, 4);
      const fua = rand() < 0.1;
      if (kind <= 1) {
        const data = patternBytes(length, round * 100 + i);
        jobs.push(s.dev.write(offset, data, { fua }));
        data.copy(s.model, offset);
      } else {
        if (kind === 2) jobs.push(s.dev.trim(offset, length, { fua }));
        else jobs.push(s.dev.zero(offset, length, { fua, noHole: rand() < 0.5 }));
        s.model.fill(0, offset, offset + length);
      }
    }
    await Promise.all(jobs);
    if (round % 10 === 9) await s.dev.flush();
  }
  await checkModel(t, s.dev, s.model, 'device matches the model');
  // Extents agree with the model: zero extents read as zeros, and they tile the device.
  const ext = await s.dev.extents(0, size, 10_000);
  t.equal(
    ext.reduce((n, e) => n + e.length, 0),
    size,
    'extents cover the device',
  );
  let pos = 0;
  for (const e of ext) {
    if (e.state === 'zero' && !s.model.subarray(pos, pos + e.length).equals(Buffer.alloc(e.length)))
      t.fail(`zero extent at ${pos}`);
    pos += e.length;
  }
});

t.test('flush and fua persist the map after the data', async (t) => {
  const s = await setup(t, 64 * 1024, 4096);
  await s.dev.write(0, Buffer.alloc(4096, 9), W);
  const header = decodeOverlayHeader(readFileSync(s.overlayPath));
  t.equal(header.dirty, true, 'an overlay in use is flagged dirty');
  t.equal(readFileSync(s.overlayPath)[header.mapOffset], 0, 'map not yet on disk');
  await s.dev.flush();
  let disk = readFileSync(s.overlayPath);
  t.equal(disk[header.mapOffset], 0b01, 'block 0 is data on disk after flush');
  t.equal(disk[header.dataOffset], 9);
  await s.dev.trim(4096, 4096, { fua: true });
  disk = readFileSync(s.overlayPath);
  t.equal(disk[header.mapOffset], 0b1001, 'fua trim persisted block 1 as zero');
});

t.test('an overlay path that already exists fails the write; a retry can succeed', async (t) => {
  const s = await setup(t, 8192, 4096);
  writeFileSync(s.overlayPath, 'someone else');
  await t.rejects(s.dev.write(0, Buffer.alloc(10), W), { code: 'EEXIST' });
  t.equal(readFileSync(s.overlayPath, 'utf8'), 'someone else', 'not clobbered');
  unlinkSync(s.overlayPath);
  await s.dev.write(0, Buffer.alloc(10, 1), W);
  const buf = Buffer.alloc(10);
  await s.dev.read(0, buf);
  t.same(buf, Buffer.alloc(10, 1));
});

t.test('cache leaves contents alone; a bad block size is refused', async (t) => {
  const s = await setup(t, 3 * 1024 * 1024, 4096);
  await s.dev.write(1000, Buffer.alloc(5000, 5), W);
  s.model.fill(5, 1000, 6000);
  await s.dev.cache(0, 3 * 1024 * 1024);
  await checkModel(t, s.dev, s.model, 'unchanged');
  t.throws(() => new CowDevice({ base: s.base, blockSize: 3000, overlayPath: `${s.overlayPath}2` }), { code: 'EINVAL' });
});

/** A device limited to `blocks` 4 KiB blocks of data, counted in a roomy shared budget so the tests can see the count. */
async function limited(t: Test, blocks: number, size = 64 * 1024): Promise<Setup & { budget: SpaceBudget }> {
  const dir = t.testdir();
  const { path, bytes } = makeBase(dir, size);
  const base = await openBase(path);
  const overlayPath = join(dir, 'overlay.cow');
  const budget = new SpaceBudget(1024 * 1024 * 1024);
  const dev = new CowDevice({ base, blockSize: 4096, overlayPath, space: { perOverlay: blocks * 4096, shared: budget } });
  t.teardown(async () => {
    await dev.close();
    await base.close();
  });
  return { base, basePath: path, model: Buffer.from(bytes), dev, overlayPath, budget };
}

/** Bytes in state "data" according to the device's extents. */
async function dataBytes(dev: CowDevice): Promise<number> {
  const ext = await dev.extents(0, dev.size, 100_000);
  return ext.filter((e) => e.state === 'data').reduce((n, e) => n + e.length, 0);
}

t.test('a write past the overlay limit fails with ENOSPC and changes nothing; at the limit overwrites work', async (t) => {
  const s = await limited(t, 3);
  const write = async (offset: number, data: Buffer): Promise<void> => {
    await s.dev.write(offset, data, W);
    data.copy(s.model, offset);
  };
  await write(0, patternBytes(8192, 2)); // blocks 0-1
  await t.rejects(s.dev.write(8192, Buffer.alloc(8192, 3), W), { code: 'ENOSPC', message: /no room for 8192 more bytes/ });
  await checkModel(t, s.dev, s.model, 'a refused two-block write wrote neither block, though one would fit');
  t.equal(states(await s.dev.extents(0, s.dev.size, 10)), 'data:8192 base:57344');
  await write(8192, patternBytes(4096, 4)); // block 2: exactly at the limit
  t.equal(s.budget.used, 3 * 4096, 'three blocks counted');

  // At the limit: every kind of request that needs a new block is refused whole.
  const refusals: [string, () => Promise<void>][] = [
    ['a whole-block write', () => s.dev.write(4096 * 5, Buffer.alloc(4096, 5), W)],
    ['a partial write that needs a copy-up', () => s.dev.write(4096 * 6 + 10, Buffer.alloc(10, 5), W)],
    ['a write from a data block into a new one', () => s.dev.write(4096 * 2 + 100, Buffer.alloc(8000, 5), W)],
    ['a write of pieces', () => s.dev.writev(4096 * 4, [Buffer.alloc(4096, 5), Buffer.alloc(4096, 6)], W)],
    ['a noHole zero', () => s.dev.zero(4096 * 2, 8192, { fua: false, noHole: true })],
    ['a trim whose partial block needs a copy-up', () => s.dev.trim(4096 * 7 + 100, 100, W)],
  ];
  for (const [what, request] of refusals) {
    await t.rejects(request(), { code: 'ENOSPC' }, what);
    await checkModel(t, s.dev, s.model, `${what}: nothing changed`);
  }
  t.equal(states(await s.dev.extents(0, s.dev.size, 10)), 'data:12288 base:53248', 'the map did not change');
  t.equal(s.budget.used, 3 * 4096, 'refusals left the count alone');

  // Overwrites of data blocks need no space, whole or partial, inline or not.
  await write(0, patternBytes(12288, 7));
  await write(4096 + 5, patternBytes(3000, 8));
  await s.dev.writev(4096, [patternBytes(4096, 9)], W);
  patternBytes(4096, 9).copy(s.model, 4096);
  await s.dev.zero(100, 200, { fua: false, noHole: true });
  s.model.fill(0, 100, 300);
  await checkModel(t, s.dev, s.model, 'overwrites at the limit');

  // Trim and zero free whole data blocks: the space comes back.
  await s.dev.trim(4096, 4096, W);
  s.model.fill(0, 4096, 8192);
  t.equal(s.budget.used, 2 * 4096, 'a trimmed block is no longer counted');
  await write(4096 * 8, patternBytes(4096, 10));
  await s.dev.zero(4096 * 8, 4096, Z);
  s.model.fill(0, 4096 * 8, 4096 * 9);
  // A trim whose body frees a block may copy up a partial block at its edge.
  await s.dev.trim(4096 * 2, 4096 + 50, W);
  s.model.fill(0, 4096 * 2, 4096 * 3 + 50);
  await checkModel(t, s.dev, s.model, 'after trims and zeros');
  t.equal(states(await s.dev.extents(0, 4096 * 4, 10)), 'data:4096 zero:8192 data:4096');
  t.equal(s.budget.used, await dataBytes(s.dev), 'the count is the data blocks of the map');
});

t.test('concurrent writes racing for the last blocks: exactly the limit is written', async (t) => {
  const s = await limited(t, 5);
  await s.dev.write(0, Buffer.alloc(4096, 1), W); // the overlay exists: the rest can take the inline path
  const results = await Promise.allSettled(
    Array.from({ length: 15 }, (_, i) => s.dev.write(4096 * (i + 1), Buffer.alloc(i % 2 === 0 ? 4096 : 100, i + 2), W)),
  );
  const written = results.filter((r) => r.status === 'fulfilled').length;
  t.equal(written, 4, 'four of fifteen new blocks fit');
  t.ok(
    results.every((r) => r.status === 'fulfilled' || (r.reason as NodeJS.ErrnoException).code === 'ENOSPC'),
    'the others are ENOSPC',
  );
  t.equal(await dataBytes(s.dev), 5 * 4096, 'five data blocks in the map');
  t.equal(s.budget.used, 5 * 4096, 'and five counted');
  for (const [i, r] of results.entries()) {
    const got = Buffer.alloc(100);
    await s.dev.read(4096 * (i + 1), got);
    const want = r.status === 'fulfilled' ? Buffer.alloc(100, i + 2) : s.model.subarray(4096 * (i + 1), 4096 * (i + 1) + 100);
    if (!got.equals(want)) t.fail(`block ${i + 1} (${r.status})`);
  }
});

t.test('a directory budget is shared by devices and comes back when one is deleted', async (t) => {
  const dir = t.testdir();
  const { path } = makeBase(dir, 64 * 1024);
  const base = await openBase(path);
  const budget = new SpaceBudget(4 * 4096);
  const space = { perOverlay: Infinity, shared: budget };
  const a = new CowDevice({ base, blockSize: 4096, overlayPath: join(dir, 'a.cow'), space });
  const b = new CowDevice({ base, blockSize: 4096, overlayPath: join(dir, 'b.cow'), space });
  t.teardown(async () => {
    await a.close();
    await b.close();
    await base.close();
  });
  await a.write(0, Buffer.alloc(3 * 4096, 1), W);
  await b.write(0, Buffer.alloc(4096, 2), W);
  t.equal(budget.used, 4 * 4096);
  await t.rejects(b.write(4096, Buffer.alloc(4096, 2), W), {
    code: 'ENOSPC',
    message: /overlay directory holds 16384 of its 16384/,
  });
  await t.rejects(a.write(4096 * 3, Buffer.alloc(4096, 1), W), { code: 'ENOSPC' }, 'a is refused too');
  await b.write(0, Buffer.alloc(4096, 3), W);
  t.pass('an overwrite still works');
  await a.trim(0, 4096, W);
  t.equal(budget.used, 3 * 4096, "a's trim returns a block");
  await b.write(4096, Buffer.alloc(4096, 2), W);
  t.pass('which b can use');
  await a.close();
  t.equal(budget.used, 2 * 4096, "deleting a returns a's blocks");
  await b.write(4096 * 2, Buffer.alloc(2 * 4096, 2), W);
  t.equal(budget.used, 4 * 4096, 'b uses them');
  await b.close();
  t.equal(budget.used, 0, 'nothing counted once both are closed');
});

t.test('a request that fails part way keeps the space of what it wrote and gives back the rest', async (t) => {
  const s = await limited(t, 8);
  await s.dev.write(0, Buffer.alloc(4096, 1), W); // block 0
  // The copy-up of block 3 fails (its base read) at once; the copy-up of block 1 finishes a
  // turn of the event loop later, after that failure: the request still counts it.
  const read = s.base.read.bind(s.base);
  s.base.read = (offset, dest) => {
    if (offset === 4096 * 3) return Promise.reject(Object.assign(new Error('injected'), { code: 'EIO' }));
    return new Promise((resolve) => setImmediate(resolve)).then(() => read(offset, dest));
  };
  t.teardown(() => {
    s.base.read = read;
  });
  await t.rejects(s.dev.write(4096 + 100, Buffer.alloc(2 * 4096, 2), W), { code: 'EIO' }, 'block 1 partial, 2 whole, 3 partial');
  t.equal(states(await s.dev.extents(0, 4096 * 4, 10)), 'data:12288 base:4096', 'blocks 1 and 2 were written');
  t.equal(s.budget.used, 3 * 4096, 'counted: blocks 0-2, not the failed copy-up of block 3');
  await t.rejects(s.dev.trim(4096 * 3 + 100, 4096, W), { code: 'EIO' }, 'a trim whose partial edge cannot be copied up');
  t.equal(states(await s.dev.extents(0, 4096 * 5, 10)), 'data:12288 base:4096 data:4096', 'its other edge was zero-filled');
  t.equal(s.budget.used, 4 * 4096, 'and counted; the failed edge is not');
  s.base.read = read;
  await s.dev.write(4096 * 5, Buffer.alloc(4 * 4096, 3), W);
  t.equal(s.budget.used, 8 * 4096, 'what was given back can be used: exactly the limit');
  t.equal(await dataBytes(s.dev), 8 * 4096);
});

t.test('each device reads the shared base with a guard of its own, in reads and copy-ups alike', async (t) => {
  const s = await setup(t, 64 * 1024, 4096);
  const seen: unknown[] = [];
  const base = s.base;
  const spy: BaseImage = Object.assign(Object.create(base) as BaseImage, {
    read(offset: number, dest: Buffer, guard?: unknown) {
      seen.push(guard);
      return base.read(offset, dest);
    },
  });
  const a = new CowDevice({ base: spy, blockSize: 4096, overlayPath: join(t.testdir(), 'a.cow') });
  const b = new CowDevice({ base: spy, blockSize: 4096, overlayPath: join(t.testdir(), 'b.cow') });
  await a.read(0, Buffer.alloc(4096)); // no overlay yet
  await a.write(10, Buffer.alloc(10, 1), { fua: false }); // copy-up of block 0 from the base
  await a.read(8192, Buffer.alloc(4096)); // through the overlay's map
  await b.read(0, Buffer.alloc(4096));
  t.equal(seen.length, 4);
  t.ok(seen[0] instanceof Object, 'a guard is passed');
  t.equal(seen[1], seen[0], 'the copy-up reads with the same guard');
  t.equal(seen[2], seen[0], 'so does a read through the map');
  t.not(seen[3], seen[0], 'another device has a guard of its own');
  await a.close();
  await b.close();
});
