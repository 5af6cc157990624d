// WRITEs that store no data (overlay-writes.ts, through CowDevice): whole blocks of zeros become
// "zero", and with elideBaseMatches whole blocks equal to the base go back to "base"; partial
// blocks and WRITE_ZEROES with noHole are stored as before; the space, the events and the map on
// disk follow.

import { readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { type BaseImage, openBase } from '../../lib/block/base-image.js';
import { BLOCK_BASE, BLOCK_DATA, BLOCK_ZERO } from '../../lib/block/bitmap.js';
import { CowDevice, type CowDeviceOptions } from '../../lib/block/cow-device.js';
import type { Extent } from '../../lib/block/device.js';
import type { OverlayEvents } from '../../lib/block/overlay-events.js';
import { OverlayFile } from '../../lib/block/overlay-file.js';
import { decodeOverlayHeader } from '../../lib/block/overlay-header.js';
import { SpaceBudget } from '../../lib/block/space-budget.js';
import { makeBase, patternBytes } from './helpers.js';

const W = { fua: false };
const BS = 4096;

interface Setup {
  base: BaseImage;
  model: Buffer;
  dev: CowDevice;
  overlayPath: string;
  /** One line per event: `elided 3+2 zero`, `zeroed 0+1`, `copy-up 5 base`. */
  events: string[];
  budget: SpaceBudget;
}

/** A base of `size` pattern bytes and a device over it, counted in a roomy budget; `options` added. */
async function setup(t: Test, size: number, options: Partial<CowDeviceOptions> = {}): Promise<Setup> {
  const dir = t.testdir();
  const { path, bytes } = makeBase(dir, size);
  const base = await openBase(path);
  const overlayPath = join(dir, 'overlay.cow');
  const events: string[] = [];
  const observer: OverlayEvents = {
    copiedUp: (_path, block, from) => events.push(`copy-up ${block} ${from}`),
    zeroed: (_path, first, count) => events.push(`zeroed ${first}+${count}`),
    elided: (_path, first, count, to) => events.push(`elided ${first}+${count} ${to}`),
  };
  const budget = new SpaceBudget(1024 ** 3);
  const dev = new CowDevice({
    base,
    blockSize: BS,
    overlayPath,
    events: observer,
    space: { perOverlay: Infinity, shared: budget },
    ...options,
  });
  t.teardown(async () => {
    await dev.close();
    await base.close();
  });
  return { base, model: Buffer.from(bytes), dev, overlayPath, events, budget };
}

function states(extents: Extent[]): string {
  return extents.map((e) => `${e.state}:${e.length / BS}`).join(' ');
}

async function map(s: Setup): Promise<string> {
  return states(await s.dev.extents(0, s.dev.size, 1000));
}

async function checkModel(t: Test, s: Setup, what: string): Promise<void> {
  const got = Buffer.alloc(s.dev.size);
  await s.dev.read(0, got);
  t.ok(got.equals(s.model), what);
}

/** Write `data` at `offset` and into the model. */
async function write(s: Setup, offset: number, data: Buffer, options = W): Promise<void> {
  await s.dev.write(offset, data, options);
  data.copy(s.model, offset);
}

/** Bytes the file system allocated to the overlay file. */
function allocated(s: Setup): number {
  return statSync(s.overlayPath).blocks * 512;
}

t.test('a whole block of zeros becomes the zero state: no data written, reads back zeros', async (t) => {
  const s = await setup(t, 64 * BS);
  await write(s, 0, patternBytes(BS, 5)); // creates the overlay: block 0 data
  await s.dev.flush();
  const before = allocated(s);
  await write(s, 8 * BS, Buffer.alloc(40 * BS)); // blocks 8-47
  await s.dev.flush();
  t.equal(await map(s), 'data:1 base:7 zero:40 base:16');
  t.equal(allocated(s), before, 'the file did not grow');
  t.equal(s.dev.dataBytes(), BS);
  t.equal(s.budget.used, BS, 'the zero blocks cost no space');
  t.strictSame(s.events, ['elided 8+40 zero']);
  await checkModel(t, s, 'reads back zeros there, the base elsewhere');
});

t.test('the first write of zeros creates the overlay and stores nothing', async (t) => {
  const s = await setup(t, 64 * BS);
  await write(s, 4 * BS, Buffer.alloc(4 * BS));
  t.ok(s.dev.hasOverlay, 'the map needs an overlay: the base is not zero there');
  t.equal(await map(s), 'base:4 zero:4 base:56');
  const { dataOffset } = decodeOverlayHeader(readFileSync(s.overlayPath));
  t.equal(statSync(s.overlayPath).size, dataOffset, 'the data region is empty');
  await checkModel(t, s, 'contents');
});

t.test('partial blocks of zeros are stored as data; whole ones beside them are not', async (t) => {
  const s = await setup(t, 64 * BS);
  await write(s, 2 * BS + 100, Buffer.alloc(3 * BS)); // block 2 partial, 3-4 whole, 5 partial
  t.equal(await map(s), 'base:2 data:1 zero:2 data:1 base:58');
  t.strictSame(s.events, ['elided 3+2 zero', 'copy-up 2 base', 'copy-up 5 base']);
  await write(s, 10 * BS, Buffer.alloc(100)); // inside block 10
  t.equal(await map(s), 'base:2 data:1 zero:2 data:1 base:4 data:1 base:53', 'a short write of zeros is data');
  t.equal(s.budget.used, 3 * BS, 'three data blocks');
  await checkModel(t, s, 'contents');
});

t.test('zeros over data free the data; data and zeros mixed in one write', async (t) => {
  const s = await setup(t, 64 * BS);
  await write(s, 0, patternBytes(16 * BS, 6)); // blocks 0-15 data
  t.equal(s.budget.used, 16 * BS);
  const mixed = patternBytes(12 * BS, 7);
  mixed.fill(0, 0, 2 * BS); // blocks 2-3
  mixed.fill(0, 5 * BS, 9 * BS); // blocks 7-10
  await write(s, 2 * BS, mixed); // blocks 2-13: zero 2-3, data 4-6, zero 7-10, data 11-13
  t.equal(await map(s), 'data:2 zero:2 data:3 zero:4 data:5 base:48');
  t.equal(s.budget.used, 10 * BS, 'six blocks gave their space back');
  t.equal(s.dev.dataBytes(), 10 * BS);
  t.strictSame(s.events, ['elided 2+2 zero', 'elided 7+4 zero']);
  await write(s, 2 * BS, patternBytes(2 * BS, 8)); // data again
  t.equal(s.budget.used, 12 * BS, 'and take it again when data returns');
  await checkModel(t, s, 'contents');
});

t.test('writev: zero blocks across uneven pieces; the data runs go as pieces', async (t) => {
  const s = await setup(t, 64 * BS);
  const bytes = patternBytes(16 * BS, 9);
  bytes.fill(0, 3 * BS, 6 * BS); // blocks 3-5 of the write
  bytes.fill(0, 15 * BS); // its last block
  const pieces: Buffer[] = [];
  for (let at = 0, cut = 7; at < bytes.length; at += cut, cut = cut * 2 + 1000) {
    pieces.push(bytes.subarray(at, Math.min(bytes.length, at + cut)));
  }
  await s.dev.writev(16 * BS, pieces, W);
  bytes.copy(s.model, 16 * BS);
  t.equal(await map(s), 'base:16 data:3 zero:3 data:9 zero:1 base:32');
  t.strictSame(s.events, ['elided 19+3 zero', 'elided 31+1 zero']);
  await checkModel(t, s, 'contents');
});

t.test('the short last block of an image becomes zero too', async (t) => {
  const s = await setup(t, 10_000); // blocks 0, 1 whole; block 2 holds 1808 bytes
  await write(s, 2 * BS, Buffer.alloc(10_000 - 2 * BS));
  t.strictSame(await s.dev.extents(0, 10_000, 10), [
    { length: 2 * BS, state: 'base', depth: 2 },
    { length: 10_000 - 2 * BS, state: 'zero', depth: 1 },
  ]);
  await checkModel(t, s, 'contents');
});

t.test('WRITE_ZEROES with noHole still stores zeros as data', async (t) => {
  const s = await setup(t, 64 * BS);
  await s.dev.zero(0, 4 * BS, { fua: false, noHole: true });
  t.equal(await map(s), 'data:4 base:60');
  t.strictSame(s.events, []);
});

t.test('at the space limit a write of zeros needs no room and frees what it replaces', async (t) => {
  const s = await setup(t, 64 * BS, { space: { perOverlay: 4 * BS } });
  await write(s, 0, patternBytes(4 * BS, 10));
  await t.rejects(s.dev.write(8 * BS, patternBytes(BS, 11), W), { code: 'ENOSPC' }, 'full');
  await write(s, 8 * BS, Buffer.alloc(8 * BS)); // zeros into base blocks: no space needed
  await write(s, 0, Buffer.alloc(2 * BS)); // zeros over two data blocks
  await write(s, 20 * BS, patternBytes(2 * BS, 12)); // the two blocks freed
  await t.rejects(s.dev.write(30 * BS, patternBytes(BS, 13), W), { code: 'ENOSPC' }, 'full again');
  t.equal(await map(s), 'zero:2 data:2 base:4 zero:8 base:4 data:2 base:42');
  await checkModel(t, s, 'contents');
});

t.test('a refused write changes nothing, zero blocks included', async (t) => {
  const s = await setup(t, 64 * BS, { space: { perOverlay: 2 * BS } });
  await write(s, 0, patternBytes(2 * BS, 14));
  const mixed = Buffer.alloc(4 * BS);
  patternBytes(BS, 15).copy(mixed, 3 * BS); // blocks 4-6 zeros, block 7 data: needs one block
  await t.rejects(s.dev.write(4 * BS, mixed, W), { code: 'ENOSPC' });
  t.equal(await map(s), 'data:2 base:62', 'the zero blocks were not applied either');
  t.strictSame(s.events, []);
});

t.test('elideBaseMatches: a whole block equal to the base goes back to the base state', async (t) => {
  const s = await setup(t, 64 * BS, { elideBaseMatches: true });
  await write(s, 0, patternBytes(8 * BS, 16)); // blocks 0-7 data
  await s.dev.flush();
  const before = allocated(s);
  const baseBytes = Buffer.alloc(64 * BS);
  await s.base.read(0, baseBytes);
  // Blocks 2-5 get the base's bytes back, block 6 zeros, 7 new data; 10-11 (base) their own bytes.
  const back = Buffer.alloc(6 * BS);
  baseBytes.copy(back, 0, 2 * BS, 6 * BS);
  patternBytes(BS, 17).copy(back, 5 * BS);
  await write(s, 2 * BS, back);
  await write(s, 10 * BS, baseBytes.subarray(10 * BS, 12 * BS));
  t.equal(await map(s), 'data:2 base:4 zero:1 data:1 base:56');
  t.strictSame(s.events, ['elided 2+4 base', 'elided 6+1 zero', 'elided 10+2 base'], 'base blocks left as they were count too');
  t.equal(s.budget.used, 3 * BS, 'five blocks gave their space back; the base blocks took none');
  await s.dev.flush();
  t.equal(allocated(s), before, 'nothing new stored');
  await write(s, 3 * BS + 10, baseBytes.subarray(3 * BS + 10, 3 * BS + 20)); // partial: copy-up as always
  t.equal(await map(s), 'data:2 base:1 data:1 base:2 zero:1 data:1 base:56');
  await checkModel(t, s, 'contents');
});

t.test('without elideBaseMatches the base bytes are stored like any data', async (t) => {
  const s = await setup(t, 64 * BS);
  const baseBytes = Buffer.alloc(4 * BS);
  await s.base.read(0, baseBytes);
  await write(s, 0, baseBytes);
  t.equal(await map(s), 'data:4 base:60');
  t.strictSame(s.events, []);
});

t.test('elideBaseMatches through writev and with blocks smaller than a page', async (t) => {
  const s = await setup(t, 64 * BS, { elideBaseMatches: true, blockSize: 512 });
  const baseBytes = Buffer.alloc(8 * 512);
  await s.base.read(8 * 512, baseBytes);
  baseBytes.fill(9, 512, 1024); // block 9 data, the others the base's
  await s.dev.writev(8 * 512, [baseBytes.subarray(0, 700), baseBytes.subarray(700, 3000), baseBytes.subarray(3000)], W);
  baseBytes.copy(s.model, 8 * 512);
  t.strictSame(await s.dev.extents(0, 16 * 512, 10), [
    { length: 9 * 512, state: 'base', depth: 2 },
    { length: 512, state: 'data', depth: 1 },
    { length: 6 * 512, state: 'base', depth: 2 },
  ]);
  t.strictSame(s.events, ['elided 8+1 base', 'elided 10+6 base']);
  await checkModel(t, s, 'contents');
});

t.test('a state change without data reaches the disk at flush and fua, as a trim does', async (t) => {
  const s = await setup(t, 64 * BS, { keep: true, elideBaseMatches: true });
  await write(s, 0, patternBytes(4 * BS, 18)); // blocks 0-3 data
  await s.dev.flush();
  const onDisk = async (): Promise<number[]> => {
    const overlay = await OverlayFile.open(s.overlayPath, s.base.identity);
    try {
      return [0, 1, 2, 3].map((b) => overlay.map.get(b));
    } finally {
      await overlay.close();
    }
  };
  t.strictSame(await onDisk(), [BLOCK_DATA, BLOCK_DATA, BLOCK_DATA, BLOCK_DATA]);
  await write(s, 0, Buffer.alloc(BS));
  const baseBytes = Buffer.alloc(BS);
  await s.base.read(BS, baseBytes);
  await write(s, BS, baseBytes);
  t.strictSame(await onDisk(), [BLOCK_DATA, BLOCK_DATA, BLOCK_DATA, BLOCK_DATA], 'not before a flush: old data, still there');
  await s.dev.flush();
  t.strictSame(await onDisk(), [BLOCK_ZERO, BLOCK_BASE, BLOCK_DATA, BLOCK_DATA], 'after the flush');
  await write(s, 2 * BS, Buffer.alloc(BS), { fua: true });
  t.strictSame(await onDisk(), [BLOCK_ZERO, BLOCK_BASE, BLOCK_ZERO, BLOCK_DATA], 'a fua write persists its own change');
  await checkModel(t, s, 'contents');
});

t.test('elideBaseMatches on a write larger than its 1 MiB base reads: runs join across them', async (t) => {
  const s = await setup(t, 1024 * BS, { elideBaseMatches: true });
  const back = Buffer.alloc(3 * 256 * BS); // blocks 0-767: the base's bytes but for blocks 255 and 600
  await s.base.read(0, back);
  back.fill(7, 255 * BS, 256 * BS);
  back.fill(8, 600 * BS, 601 * BS);
  const reads: number[] = [];
  const read = s.base.read.bind(s.base);
  s.base.read = (offset, dest) => {
    reads.push(dest.length);
    return read(offset, dest);
  };
  t.teardown(() => {
    s.base.read = read;
  });
  await write(s, 0, back);
  t.strictSame(reads, [1024 * 1024, 1024 * 1024, 1024 * 1024], 'three reads of 1 MiB, into one buffer');
  t.equal(await map(s), 'base:255 data:1 base:344 data:1 base:423');
  t.strictSame(s.events, ['elided 0+255 base', 'elided 256+344 base', 'elided 601+167 base']);
  await checkModel(t, s, 'contents');
});
