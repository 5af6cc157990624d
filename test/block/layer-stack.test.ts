// Layered golden images: frozen overlays stacked on a base file read as one read-only image.
// Reads fall through each layer's map (data from the layer, zeros, or the level below) and are
// compared byte for byte with a model; extents() name the state and the level (depth) of each
// run and stop after maxExtents; a CowDevice on the stack sees depths 1 to 4. A layer that is
// not frozen, made for another base or layer, or not an overlay at all is refused in one line,
// leaving no descriptor open, and closing the stack closes every level.

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { type BaseIdentity, type BaseImage, openBase } from '../../lib/block/base-image.js';
import { BLOCK_BASE, BLOCK_DATA, BLOCK_ZERO, type BlockState } from '../../lib/block/bitmap.js';
import { CowDevice } from '../../lib/block/cow-device.js';
import type { Extent, ExtentState } from '../../lib/block/device.js';
import { layerIdentity } from '../../lib/block/layer-identity.js';
import { openImageStack, openLayer } from '../../lib/block/layer-stack.js';
import { OverlayFile } from '../../lib/block/overlay-file.js';
import { inspectOverlay } from '../../lib/block/overlay-inspect.js';
import { freezeOverlay } from '../../lib/block/overlay-lifecycle.js';
import { fdsOn } from '../helpers/files.js';
import { makeBase, patternBytes, randomInt, seededRandom } from './helpers.js';

const W = { fua: false };
const Z = { fua: false, noHole: false };

const BS1 = 4096;
const BS2 = 65536;
const BS_TOP = 512;
/** 16 blocks of 64 KiB and 3000 bytes: the last block of every level is partial. */
const SIZE = 16 * BS2 + 3000;

/** Runs of one level's map: [first block, count, state]; the rest is base. */
type Runs = ReadonlyArray<readonly [number, number, BlockState]>;

/** One level of the model: its block size and its map. */
interface LevelModel {
  readonly blockSize: number;
  readonly runs: Runs;
}

/** L1 (4 KiB blocks), written with a CowDevice on the base. */
const L1_RUNS: Runs = [
  [2, 4, BLOCK_DATA],
  [10, 10, BLOCK_ZERO],
  [24, 2, BLOCK_DATA],
  [200, 10, BLOCK_ZERO],
  [256, 1, BLOCK_DATA],
];
/** L2 (64 KiB blocks), written with OverlayFile directly on L1. */
const L2_RUNS: Runs = [
  [1, 1, BLOCK_DATA],
  [3, 1, BLOCK_ZERO],
  [5, 2, BLOCK_DATA],
  [12, 1, BLOCK_ZERO],
];
/** The client overlay (512 B blocks) on the stack of both. */
const TOP_RUNS: Runs = [
  [0, 2, BLOCK_DATA],
  [132, 8, BLOCK_ZERO],
  [(3 * BS2) / BS_TOP, 1, BLOCK_DATA], // a partial zero in L2's zero block: copied up
  [1679, 2, BLOCK_DATA],
  [Math.floor((SIZE - 1) / BS_TOP), 1, BLOCK_DATA],
];

const STATE_NAME: Record<BlockState, ExtentState> = { [BLOCK_BASE]: 'base', [BLOCK_DATA]: 'data', [BLOCK_ZERO]: 'zero' };

function stateAt(level: LevelModel, byte: number): BlockState {
  const block = Math.floor(byte / level.blockSize);
  for (const [first, count, state] of level.runs) if (block >= first && block < first + count) return state;
  return BLOCK_BASE;
}

interface Segment {
  readonly start: number;
  readonly end: number;
  readonly state: ExtentState;
  readonly depth: number;
}

/**
 * What each byte of an image made of `levels` (top first) over a base file is: the top-most level
 * whose map is not "base" supplies it at that level's depth, else the base file one deeper.
 */
function modelSegments(levels: readonly LevelModel[], size: number): Segment[] {
  const cuts = new Set<number>([0, size]);
  for (const level of levels) for (let at = 0; at < size; at += level.blockSize) cuts.add(at);
  const points = [...cuts].sort((a, b) => a - b);
  const out: Segment[] = [];
  for (let i = 0; i + 1 < points.length; i++) {
    const start = points[i] as number;
    const end = points[i + 1] as number;
    let state: ExtentState = 'base';
    let depth = levels.length + 1;
    for (let d = 0; d < levels.length; d++) {
      const s = stateAt(levels[d] as LevelModel, start);
      if (s !== BLOCK_BASE) {
        state = STATE_NAME[s];
        depth = d + 1;
        break;
      }
    }
    const last = out[out.length - 1];
    if (last !== undefined && last.state === state && last.depth === depth) out[out.length - 1] = { ...last, end };
    else out.push({ start, end, state, depth });
  }
  return out;
}

/** The extents the model gives for [offset, offset + length), at most max(1, maxExtents). */
function modelExtents(segments: readonly Segment[], offset: number, length: number, maxExtents: number): Extent[] {
  const end = Math.min(offset + length, SIZE);
  const out: Extent[] = [];
  for (const s of segments) {
    const from = Math.max(s.start, offset);
    const to = Math.min(s.end, end);
    if (from < to) out.push({ length: to - from, state: s.state, depth: s.depth });
  }
  return out.slice(0, Math.max(1, maxExtents));
}

function show(extents: readonly Extent[]): string {
  return extents.map((e) => `${e.state}@${e.depth}:${e.length}`).join(' ');
}

/** The identity of the base file at `path` (opened and closed again). */
async function identityOf(path: string): Promise<BaseIdentity> {
  const image = await openBase(path);
  await image.close();
  return image.identity;
}

async function readAt(image: { read(offset: number, dest: Buffer): Promise<void> }, offset: number, length: number) {
  const buf = Buffer.alloc(length, 0xee);
  await image.read(offset, buf);
  return buf;
}

/** Equal bytes, or a failure naming the first differing byte. */
function sameBytes(t: Test, got: Buffer, want: Buffer, what: string): void {
  if (got.equals(want)) return void t.pass(what);
  let i = 0;
  while (got[i] === want[i]) i++;
  t.fail(`${what}: first difference at byte ${i} (got ${got[i]}, want ${want[i]})`);
}

/** Write `runs` of the map into the overlay at `path` (made on `below`), freshly created. */
async function writeRawOverlay(
  path: string,
  below: BaseImage,
  blockSize: number,
  runs: Runs,
  model: Buffer,
  seed: number,
): Promise<void> {
  const overlay = await OverlayFile.create(path, { blockSize, size: below.size, baseIdentity: below.identity, atomic: true });
  for (const [first, count, state] of runs) {
    const start = first * blockSize;
    const end = Math.min((first + count) * blockSize, below.size);
    if (state === BLOCK_DATA) {
      const data = patternBytes(end - start, seed++);
      await overlay.writeData(start, data);
      data.copy(model, start);
    } else model.fill(0, start, end);
    overlay.map.setRange(first, count, state);
  }
  await overlay.markClean();
  await overlay.close();
}

interface Fixture {
  readonly dir: string;
  readonly basePath: string;
  readonly l1: string;
  readonly l2: string;
  /** Contents of base, base+L1, base+L1+L2. */
  readonly base: Buffer;
  readonly one: Buffer;
  readonly two: Buffer;
}

/** The base, L1 on it and L2 on L1, both frozen, with the model of each stack. */
async function makeFixture(t: Test): Promise<Fixture> {
  const dir = t.testdir();
  const { path: basePath, bytes } = makeBase(dir, SIZE);
  const l1 = join(dir, 'l1.cow');
  const l2 = join(dir, 'l2.cow');
  const one = Buffer.from(bytes);

  const base = await openBase(basePath);
  const dev = new CowDevice({ base, blockSize: BS1, overlayPath: l1, keep: true });
  const writes: Array<[number, number, number]> = [
    [2 * BS1, 4 * BS1, 11], // data 2-5, whole blocks
    [100_000, 5000, 12], // blocks 24-25, both partial: copied up from the base
    [SIZE - 500, 500, 13], // the partial last block
  ];
  for (const [offset, length, seed] of writes) {
    const data = patternBytes(length, seed);
    await dev.write(offset, data, W);
    data.copy(one, offset);
  }
  for (const [offset, length] of [
    [10 * BS1, 10 * BS1],
    [200 * BS1, 10 * BS1],
  ] as const) {
    await dev.trim(offset, length, W);
    one.fill(0, offset, offset + length);
  }
  await dev.close();
  await base.close();
  const l1Map = (await inspectOverlay(l1)).map;
  const l1Level = { blockSize: BS1, runs: L1_RUNS };
  const wrong: number[] = [];
  for (let b = 0; b < l1Map.blocks; b++) if (l1Map.get(b) !== stateAt(l1Level, b * BS1)) wrong.push(b);
  t.strictSame(wrong, [], 'L1 has the map the model expects');
  await freezeOverlay(l1);

  const stack1 = await openImageStack(basePath, [l1]);
  const two = Buffer.from(one);
  await writeRawOverlay(l2, stack1, BS2, L2_RUNS, two, 21);
  await stack1.close();
  await freezeOverlay(l2);
  return { dir, basePath, l1, l2, base: bytes, one, two };
}

const L1_MODEL: LevelModel = { blockSize: BS1, runs: L1_RUNS };
const L2_MODEL: LevelModel = { blockSize: BS2, runs: L2_RUNS };
const TOP_MODEL: LevelModel = { blockSize: BS_TOP, runs: TOP_RUNS };

t.test('reads through one and two layers match the model', async (t) => {
  const f = await makeFixture(t);
  const stacks: Array<[string, string[], Buffer]> = [
    ['no layer', [], f.base],
    ['one layer (4 KiB blocks)', [f.l1], f.one],
    ['two layers (4 KiB under 64 KiB blocks)', [f.l1, f.l2], f.two],
  ];
  for (const [what, layers, model] of stacks) {
    const image = await openImageStack(f.basePath, layers);
    t.equal(image.size, SIZE, `${what}: size`);
    t.equal(image.writable, false, `${what}: read-only`);
    sameBytes(t, await readAt(image, 0, SIZE), model, `${what}: the whole image in one read`);
    const spans: Array<[number, number, string]> = [
      [0, 0, 'nothing'],
      [2 * BS1 + 7, 3 * BS1, 'inside a data run of L1, unaligned'],
      [10 * BS1 + 1, 5 * BS1, 'inside a zero run of L1'],
      [BS2 + 100, 1000, 'inside L2 data'],
      [3 * BS2 + 5, 100, 'inside L2 zero'],
      [BS1 - 3, 30 * BS1, 'from base across data, base, zero, base, data'],
      [100_000 - 17, 5100, "over L1's partial write"],
      [BS2 - 1, 2, 'the last byte of a base run and the first of L2 data'],
      [SIZE - 3100, 3100, 'the partial last blocks'],
      [SIZE - 1, 1, 'the last byte'],
    ];
    for (const [offset, length, where] of spans) {
      sameBytes(t, await readAt(image, offset, length), model.subarray(offset, offset + length), `${what}: ${where}`);
    }
    const rand = seededRandom(layers.length + 7);
    let bad = 0;
    for (let i = 0; i < 300; i++) {
      const offset = randomInt(rand, SIZE);
      const length = randomInt(rand, Math.min(SIZE - offset, 3 * BS2) + 1);
      const got = await readAt(image, offset, length);
      if (!got.equals(model.subarray(offset, offset + length))) bad++;
    }
    t.equal(bad, 0, `${what}: 300 random unaligned reads`);
    await image.cache(0, SIZE);
    await image.flush();
    await image.close();
  }
});

t.test('extents give state and depth through two layers, cut at maxExtents, from the offset', async (t) => {
  const f = await makeFixture(t);
  const image = await openImageStack(f.basePath, [f.l1, f.l2]);
  t.teardown(() => image.close());
  const full = await image.extents(0, SIZE, 1000);
  t.same(full, [
    { length: 2 * BS1, state: 'base', depth: 3 },
    { length: 4 * BS1, state: 'data', depth: 2 },
    { length: 4 * BS1, state: 'base', depth: 3 },
    { length: BS2 - 10 * BS1, state: 'zero', depth: 2 }, // L1's zero run, cut by L2's data block 1
    { length: BS2, state: 'data', depth: 1 },
    { length: BS2, state: 'base', depth: 3 },
    { length: BS2, state: 'zero', depth: 1 },
    { length: BS2, state: 'base', depth: 3 },
    { length: 2 * BS2, state: 'data', depth: 1 },
    { length: 5 * BS2, state: 'base', depth: 3 },
    { length: BS2, state: 'zero', depth: 1 },
    { length: 2 * BS1, state: 'zero', depth: 2 }, // the end of L1's second zero run
    { length: 256 * BS1 - 210 * BS1, state: 'base', depth: 3 },
    { length: 3000, state: 'data', depth: 2 },
  ]);
  t.equal(
    full.reduce((sum, e) => sum + e.length, 0),
    SIZE,
    'they cover the image',
  );
  t.same(await image.extents(0, SIZE, 3), full.slice(0, 3), 'three: stops inside the first base run of L2');
  t.same(await image.extents(0, SIZE, 5), full.slice(0, 5));
  t.same(await image.extents(0, SIZE, 0), full.slice(0, 1), 'maxExtents 0 still gives one');
  t.same(
    await image.extents(10_000, 100_000, 10),
    [
      { length: 6 * BS1 - 10_000, state: 'data', depth: 2 },
      { length: 4 * BS1, state: 'base', depth: 3 },
      { length: BS2 - 10 * BS1, state: 'zero', depth: 2 },
      { length: 110_000 - BS2, state: 'data', depth: 1 },
    ],
    'an unaligned range starts at its offset and ends at its end',
  );
  t.same(await image.extents(SIZE - 10, 1000, 4), [{ length: 10, state: 'data', depth: 2 }], 'cut at the size');
  t.same(await image.extents(SIZE, 10, 4), [], 'nothing at the end');

  // Any range, any limit: the model's extents from the offset, the first maxExtents of them.
  const segments = modelSegments([L2_MODEL, L1_MODEL], SIZE);
  const rand = seededRandom(99);
  const failures: string[] = [];
  for (let i = 0; i < 300; i++) {
    const offset = randomInt(rand, SIZE);
    const length = 1 + randomInt(rand, SIZE - offset);
    const max = randomInt(rand, 8);
    const got = await image.extents(offset, length, max);
    const want = modelExtents(segments, offset, length, max);
    if (show(got) !== show(want)) failures.push(`extents(${offset}, ${length}, ${max}): ${show(got)} != ${show(want)}`);
  }
  t.strictSame(failures.slice(0, 3), [], '300 random ranges and limits follow the model');

  const one = await openImageStack(f.basePath, [f.l1]);
  t.same(await one.extents(0, 8 * BS1, 10), [
    { length: 2 * BS1, state: 'base', depth: 2 },
    { length: 4 * BS1, state: 'data', depth: 1 },
    { length: 2 * BS1, state: 'base', depth: 2 },
  ]);
  await one.close();
});

t.test('a device on the stack: overlay made on the stack, reads and depths 1 to 4', async (t) => {
  const f = await makeFixture(t);
  const stack = await openImageStack(f.basePath, [f.l1, f.l2]);
  t.teardown(() => stack.close());
  const topPath = join(f.dir, 'top.cow');
  const dev = new CowDevice({ base: stack, blockSize: BS_TOP, overlayPath: topPath, keep: true });
  const stackSegments = modelSegments([L2_MODEL, L1_MODEL], SIZE);
  t.same(
    await dev.extents(0, SIZE, 1000),
    modelExtents(stackSegments, 0, SIZE, 1000).map((e) => ({ ...e, depth: (e.depth as number) + 1 })),
    'before the first write: the stack one level deeper',
  );
  t.same(await dev.extents(5, 10, 0), [{ length: 10, state: 'base', depth: 4 }], 'maxExtents 0 gives one');

  const model = Buffer.from(f.two);
  const data = patternBytes(2 * BS_TOP, 31);
  await dev.write(0, data, W);
  data.copy(model, 0);
  await dev.trim(BS2 + 4 * BS_TOP, 8 * BS_TOP, W);
  model.fill(0, BS2 + 4 * BS_TOP, BS2 + 12 * BS_TOP);
  const straddle = patternBytes(300, 32);
  await dev.write(210 * BS1 - 100, straddle, W); // over L1's zero run and the base after it: copied up from both
  straddle.copy(model, 210 * BS1 - 100);
  await dev.zero(3 * BS2 + 10, 20, Z); // partial, in L2's zero block: zeros copied up
  await dev.write(SIZE - 1, Buffer.from([0x5a]), W);
  model[SIZE - 1] = 0x5a;

  sameBytes(t, await readAt(dev, 0, SIZE), model, 'the whole device');
  const rand = seededRandom(5);
  let bad = 0;
  for (let i = 0; i < 200; i++) {
    const offset = randomInt(rand, SIZE);
    const length = randomInt(rand, Math.min(SIZE - offset, 2 * BS2) + 1);
    if (!(await readAt(dev, offset, length)).equals(model.subarray(offset, offset + length))) bad++;
  }
  t.equal(bad, 0, '200 random reads');

  const segments = modelSegments([TOP_MODEL, L2_MODEL, L1_MODEL], SIZE);
  const all = await dev.extents(0, SIZE, 10_000);
  t.same(all, modelExtents(segments, 0, SIZE, 10_000), 'every extent follows the model');
  t.strictSame([...new Set(all.map((e) => e.depth))].sort(), [1, 2, 3, 4], 'depths 1 (own) to 4 (the base file)');
  t.same(await dev.extents(0, SIZE, 4), all.slice(0, 4));
  const failures: string[] = [];
  for (let i = 0; i < 200; i++) {
    const offset = randomInt(rand, SIZE);
    const length = 1 + randomInt(rand, SIZE - offset);
    const max = randomInt(rand, 10);
    const got = await dev.extents(offset, length, max);
    const want = modelExtents(segments, offset, length, max);
    if (show(got) !== show(want)) failures.push(`extents(${offset}, ${length}, ${max}): ${show(got)} != ${show(want)}`);
  }
  t.strictSame(failures.slice(0, 3), [], '200 random ranges and limits follow the model');
  await dev.close();

  const header = (await inspectOverlay(topPath)).header;
  const l2Header = (await inspectOverlay(f.l2)).header;
  t.same(
    { size: header.baseSize, fingerprint: header.baseFingerprint },
    layerIdentity(l2Header),
    'the overlay records the top layer as its base',
  );
  t.same(stack.identity, layerIdentity(l2Header), "the stack's identity is the top layer's");
  t.equal(stack.path, f.l2, "the stack's path is the top layer's");
  const reopened = await OverlayFile.open(topPath, stack.identity);
  t.equal(reopened.wasDirty, false);
  await reopened.close();
  const base = await openBase(f.basePath);
  await t.rejects(OverlayFile.open(topPath, base.identity), {
    code: 'EINVAL',
    message: /belongs to another base image/,
  });
  await base.close();
});

t.test('an overlay made on the base alone is refused with the identity of a stack', async (t) => {
  const f = await makeFixture(t);
  const base = await openBase(f.basePath);
  const path = join(f.dir, 'on-base.cow');
  const dev = new CowDevice({ base, blockSize: BS1, overlayPath: path, keep: true });
  await dev.write(0, Buffer.alloc(BS1, 1), W);
  await dev.close();
  await base.close();
  for (const layers of [[f.l1], [f.l1, f.l2]]) {
    const stack = await openImageStack(f.basePath, layers);
    const fp = (fingerprint: string) => `${fingerprint.substring(0, 16)}…`;
    const made = (await inspectOverlay(path)).header;
    await t.rejects(OverlayFile.open(path, stack.identity), {
      code: 'EINVAL',
      message:
        `overlay ${path} belongs to another base image: made for (size ${SIZE}, fingerprint ${fp(made.baseFingerprint)}), ` +
        `the base is (size ${SIZE}, fingerprint ${fp(stack.identity.fingerprint)})`,
    });
    await stack.close();
  }
  t.equal(fdsOn(path), 0, 'no descriptor left on the overlay');
});

t.test('write-type calls are refused; reads of a closed stack are refused at every level', async (t) => {
  const f = await makeFixture(t);
  const base = await openBase(f.basePath);
  const one = await openLayer(f.l1, base);
  const two = await openLayer(f.l2, one);
  for (const call of [() => two.write(0, Buffer.alloc(1), W), () => two.zero(0, 1, Z), () => two.trim(0, 1, W)]) {
    await t.rejects(call(), { code: 'EPERM', message: `${f.l2} is read-only` });
  }
  t.equal(fdsOn(f.basePath), 1);
  t.equal(fdsOn(f.l1), 1);
  t.equal(fdsOn(f.l2), 1);
  await two.close();
  t.equal(fdsOn(f.basePath), 0, 'the base file is closed');
  t.equal(fdsOn(f.l1), 0, 'the lower layer is closed');
  t.equal(fdsOn(f.l2), 0, 'the top layer is closed');
  await t.rejects(readAt(two, 0, 10), { code: 'ESHUTDOWN', message: `layer ${f.l2} is closed` });
  await t.rejects(readAt(one, 0, 10), { code: 'ESHUTDOWN', message: `layer ${f.l1} is closed` });
  await t.rejects(readAt(base, 0, 10), { code: 'ESHUTDOWN', message: `base image ${f.basePath} is closed` });
  await two.close(); // idempotent
  await one.close();
});

t.test('refusals: one line naming both sides, nothing left open', async (t) => {
  const f = await makeFixture(t);
  const dir = f.dir;
  const short = (fingerprint: string) => `${fingerprint.substring(0, 16)}…`;
  const baseId = (await inspectOverlay(f.l1)).header.baseFingerprint;
  const l1Id = layerIdentity((await inspectOverlay(f.l1)).header);

  // Not frozen: a clean overlay on the base.
  const loose = join(dir, 'loose.cow');
  const base = await openBase(f.basePath);
  const dev = new CowDevice({ base, blockSize: BS1, overlayPath: loose, keep: true });
  await dev.write(0, Buffer.alloc(BS1, 3), W);
  await dev.close();
  await base.close();

  // Another base of the same size, one of another size.
  const other = makeBase(dir, SIZE, 2, 'other.img');
  const otherId = await identityOf(other.path);
  const smaller = makeBase(dir, SIZE - BS1, 1, 'smaller.img');
  const smallerId = await identityOf(smaller.path);

  // A frozen layer whose virtual size is not its base's (baseIdentity and size disagree).
  const stretched = join(dir, 'stretched.cow');
  const baseIdentity = { size: SIZE, fingerprint: baseId };
  const odd = await OverlayFile.create(stretched, { blockSize: BS1, size: SIZE + BS1, baseIdentity });
  await odd.markClean();
  await odd.close();
  await freezeOverlay(stretched);

  const notOverlay = join(dir, 'plain.img');
  writeFileSync(notOverlay, Buffer.alloc(8192, 0x41));
  const missing = join(dir, 'missing.cow');

  const cases: Array<[string, string, string[], string | RegExp, string]> = [
    [
      'not frozen',
      f.basePath,
      [loose],
      `layer ${loose} is not frozen: freeze it first (nbd-cow overlay freeze ${loose})`,
      'EINVAL',
    ],
    [
      'made for another base of the same size',
      other.path,
      [f.l1],
      `layer ${f.l1} was made for another base or layer: made for (size ${SIZE}, fingerprint ${short(baseId)}), ` +
        `below it is ${other.path} (size ${SIZE}, fingerprint ${short(otherId.fingerprint)})`,
      'EINVAL',
    ],
    [
      'made for a base of another size',
      smaller.path,
      [f.l1],
      `layer ${f.l1} was made for another base or layer: made for (size ${SIZE}, fingerprint ${short(baseId)}), ` +
        `below it is ${smaller.path} (size ${SIZE - BS1}, fingerprint ${short(smallerId.fingerprint)})`,
      'EINVAL',
    ],
    [
      'layers in the wrong order',
      f.basePath,
      [f.l2, f.l1],
      `layer ${f.l2} was made for another base or layer: made for (size ${SIZE}, fingerprint ${short(l1Id.fingerprint)}), ` +
        `below it is ${f.basePath} (size ${SIZE}, fingerprint ${short(baseId)})`,
      'EINVAL',
    ],
    [
      'the top layer alone on the base',
      f.basePath,
      [f.l2],
      `layer ${f.l2} was made for another base or layer: made for (size ${SIZE}, fingerprint ${short(l1Id.fingerprint)}), ` +
        `below it is ${f.basePath} (size ${SIZE}, fingerprint ${short(baseId)})`,
      'EINVAL',
    ],
    ['L1 twice', f.basePath, [f.l1, f.l1], new RegExp(`^layer ${f.l1} was made for another base or layer: `), 'EINVAL'],
    [
      'a virtual size other than its base',
      f.basePath,
      [stretched],
      `layer ${stretched}: virtual size ${SIZE + BS1} differs from the size it was made on (${SIZE})`,
      'EINVAL',
    ],
    [
      'not an overlay',
      f.basePath,
      [f.l1, notOverlay],
      `overlay ${notOverlay}: overlay header: bad magic 0x4141414141414141 (not an nbd-cow overlay)`,
      'EINVAL',
    ],
    ['missing', f.basePath, [f.l1, missing], `cannot open overlay ${missing}: no such file`, 'ENOENT'],
  ];
  for (const [what, basePath, layers, message, code] of cases) {
    try {
      const image = await openImageStack(basePath, layers);
      await image.close();
      t.fail(`${what}: opened`);
    } catch (err) {
      const e = err as NodeJS.ErrnoException;
      if (typeof message === 'string') t.equal(e.message, message, what);
      else t.match(e.message, message, what);
      t.equal(e.code, code, `${what}: code`);
      t.notMatch(e.message, /\n/, `${what}: one line`);
    }
    const open = [basePath, ...layers].filter((path) => fdsOn(path) !== 0);
    t.strictSame(open, [], `${what}: no descriptor left open`);
  }

  await t.rejects(openImageStack(missing, [f.l1]), { code: 'ENOENT', message: /cannot open base image .*missing\.cow/ });

  // openLayer leaves what it was given open when it refuses.
  const below = await openBase(other.path);
  await t.rejects(openLayer(f.l1, below), { code: 'EINVAL' });
  t.equal(fdsOn(f.l1), 0, 'the refused layer is closed');
  t.equal(fdsOn(other.path), 1, 'what is below stays open');
  t.same(await readAt(below, 0, 100), other.bytes.subarray(0, 100));
  await below.close();
});
