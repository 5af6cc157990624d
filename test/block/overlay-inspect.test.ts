// `overlay info` and `overlay map` read an overlay read-only: the counts and extents follow the
// map (data, zero, base; the partial last block counted by its bytes), a lock held by a live
// process shows as in use, a crashed overlay as dirty, and a file that is not an overlay is one
// error naming it. Nothing on disk changes.

import { mkdirSync, readFileSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { openBase } from '../../lib/block/base-image.js';
import { CowDevice } from '../../lib/block/cow-device.js';
import { OverlayFile } from '../../lib/block/overlay-file.js';
import { inspectOverlay, overlayExtents, overlayInfo } from '../../lib/block/overlay-inspect.js';
import { acquireOverlayLock } from '../../lib/block/overlay-lock.js';
import { makeBase } from './helpers.js';

const BS = 4096;
/** 64 blocks and 1000 bytes: the last block is partial. */
const SIZE = 64 * BS + 1000;

/**
 * A kept overlay: data in blocks 1-2 and the last (partial) block, zero in 8-15, data written as
 * zeros (NO_HOLE) in 20; the rest base. `crash` closes it without marking it clean.
 */
async function makeOverlay(t: Test, crash = false): Promise<{ dir: string; base: string; file: string }> {
  const dir = t.testdir();
  const { path } = makeBase(dir, SIZE);
  const base = await openBase(path);
  const file = join(dir, 'named-golden@i.cow');
  const overlay = await OverlayFile.create(file, { blockSize: BS, size: SIZE, baseIdentity: base.identity, atomic: true });
  const dev = new CowDevice({ base, blockSize: BS, overlayPath: file, overlay, keep: true });
  await dev.write(BS, Buffer.alloc(2 * BS, 1), { fua: false });
  await dev.write(SIZE - 10, Buffer.alloc(10, 2), { fua: false });
  await dev.trim(8 * BS, 8 * BS, { fua: false });
  await dev.zero(20 * BS, BS, { fua: false, noHole: true });
  await dev.flush();
  if (crash) await overlay.close();
  else await dev.close();
  await base.close();
  return { dir, base: path, file };
}

t.test('counts and extents follow the map; the partial last block counts its bytes', async (t) => {
  const { base, file } = await makeOverlay(t);
  const before = readFileSync(file);
  const inspected = await inspectOverlay(file);
  const info = overlayInfo(inspected);
  const identity = (await openBase(base)).identity;
  t.match(info, {
    path: file,
    formatVersion: 1,
    blockSize: BS,
    virtualSize: SIZE,
    blocks: 65,
    base: identity,
    data: { blocks: 4, bytes: 3 * BS + 1000 },
    zero: { blocks: 8, bytes: 8 * BS },
    fromBase: { blocks: 53, bytes: 53 * BS },
    fileLength: statSync(file).size,
    allocatedBytes: statSync(file).blocks * 512,
    dirty: false,
    inUseBy: undefined,
  });
  t.equal(info.data.bytes + info.zero.bytes + info.fromBase.bytes, SIZE, 'the bytes add up to the virtual size');
  const dataOffset = inspected.geometry.dataOffset;
  t.same(overlayExtents(inspected), [
    { start: 0, length: BS, state: 'base', fileOffset: undefined },
    { start: BS, length: 2 * BS, state: 'data', fileOffset: dataOffset + BS },
    { start: 3 * BS, length: 5 * BS, state: 'base', fileOffset: undefined },
    { start: 8 * BS, length: 8 * BS, state: 'zero', fileOffset: undefined },
    { start: 16 * BS, length: 4 * BS, state: 'base', fileOffset: undefined },
    { start: 20 * BS, length: BS, state: 'data', fileOffset: dataOffset + 20 * BS },
    { start: 21 * BS, length: 43 * BS, state: 'base', fileOffset: undefined },
    { start: 64 * BS, length: 1000, state: 'data', fileOffset: dataOffset + 64 * BS },
  ]);
  t.same(readFileSync(file), before, 'the overlay is unchanged');
});

t.test('a crashed overlay is dirty; a live lock holder is in use, a dead one is not', async (t) => {
  const { file } = await makeOverlay(t, true);
  t.equal(overlayInfo(await inspectOverlay(file)).dirty, true);
  const lock = await acquireOverlayLock(`${file}.lock`, 'named overlay golden@i');
  t.equal((await inspectOverlay(file)).inUseBy, process.pid, 'held by this process');
  await lock.release();
  writeFileSync(`${file}.lock`, '999999999\n');
  t.equal((await inspectOverlay(file)).inUseBy, undefined, 'a lock of a process that does not exist is stale');
});

t.test('what is not a readable overlay is one error naming the file', async (t) => {
  const dir = t.testdir();
  const { file } = await makeOverlay(t);
  const cases: Array<[string, () => string, RegExp]> = [
    ['missing', () => join(dir, 'nope.cow'), /cannot open overlay .*nope\.cow: no such file/],
    ['under a file', () => join(file, 'x.cow'), /cannot open overlay .*x\.cow: ENOTDIR/],
    [
      'a directory',
      () => {
        mkdirSync(join(dir, 'd.cow'));
        return join(dir, 'd.cow');
      },
      /d\.cow: not a regular file/,
    ],
    [
      'too short',
      () => {
        writeFileSync(join(dir, 'short.cow'), Buffer.alloc(100));
        return join(dir, 'short.cow');
      },
      /short\.cow: file is 100 bytes, too short for an overlay header/,
    ],
    [
      'not an overlay',
      () => {
        writeFileSync(join(dir, 'x.img'), Buffer.alloc(8192, 0x41));
        return join(dir, 'x.img');
      },
      /x\.img: overlay header: bad magic/,
    ],
    [
      'cut in its map',
      () => {
        const copy = join(dir, 'cut.cow');
        writeFileSync(copy, readFileSync(file));
        truncateSync(copy, 5000);
        return copy;
      },
      /cut\.cow: file is 5000 bytes, shorter than its header and map/,
    ],
  ];
  for (const [what, make, message] of cases) {
    await t.rejects(inspectOverlay(make()), message, what);
  }
});
