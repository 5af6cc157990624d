import { existsSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { BLOCK_DATA, BLOCK_ZERO } from '../../lib/block/bitmap.js';
import { OverlayFile } from '../../lib/block/overlay-file.js';
import { decodeOverlayHeader } from '../../lib/block/overlay-header.js';
import { overlayGeometry } from '../../lib/block/overlay-layout.js';

const identity = { size: 100_000, fingerprint: 'ab'.repeat(32) };

t.test('geometry: header, 4 KiB map pages, data aligned to max(block, 4 KiB)', async (t) => {
  t.same(overlayGeometry(4096, 100_000), {
    blockSize: 4096,
    size: 100_000,
    blocks: 25,
    mapOffset: 4096,
    mapLength: 4096,
    dataOffset: 8192,
  });
  t.same(overlayGeometry(512, 1000).dataOffset, 8192);
  t.same(overlayGeometry(65536, 0), {
    blockSize: 65536,
    size: 0,
    blocks: 0,
    mapOffset: 4096,
    mapLength: 4096,
    dataOffset: 65536,
  });
  // 16385 pages' worth of blocks need 2 map pages.
  t.equal(overlayGeometry(512, 512 * 16385).mapLength, 8192);
  t.equal(overlayGeometry(1 << 20, 10 * 1024 ** 3).dataOffset, 1 << 20);
  t.throws(() => overlayGeometry(1000, 1), { code: 'EINVAL', message: /power of two/ });
  t.throws(() => overlayGeometry(256, 1), { code: 'EINVAL' });
});

t.test('create writes a dirty header and a sparse file; O_EXCL, mode 0600', async (t) => {
  const path = join(t.testdir(), 'o.cow');
  const ov = await OverlayFile.create(path, { blockSize: 4096, size: identity.size, baseIdentity: identity });
  t.equal(statSync(path).mode & 0o777, 0o600);
  t.equal(statSync(path).size, 8192);
  const h = decodeOverlayHeader(readFileSync(path));
  t.match(h, { blockSize: 4096, virtualSize: 100_000, baseSize: 100_000, baseFingerprint: identity.fingerprint, dirty: true });
  t.equal(ov.dirty, true);
  await t.rejects(OverlayFile.create(path, { blockSize: 4096, size: identity.size, baseIdentity: identity }), { code: 'EEXIST' });
  await ov.close();
});

t.test('data and map survive flush, markClean and reopen', async (t) => {
  const path = join(t.testdir(), 'o.cow');
  const ov = await OverlayFile.create(path, { blockSize: 4096, size: identity.size, baseIdentity: identity });
  await ov.writeData(4096 * 3, Buffer.alloc(4096, 0x33));
  ov.map.set(3, BLOCK_DATA);
  ov.map.setRange(5, 2, BLOCK_ZERO);
  t.equal(ov.map.dirtyCount, 1);
  await ov.flush();
  t.equal(ov.map.dirtyCount, 0, 'flush wrote the map page');
  const onDisk = readFileSync(path);
  t.equal(onDisk[4096], 0b01_000000, 'block 3 is data in byte 0');
  t.equal(onDisk[4097], 0b0010_1000, 'blocks 5 and 6 are zero in byte 1');
  t.equal(onDisk[8192 + 4096 * 3], 0x33, 'block 3 at dataOffset + 3 * blockSize');
  await ov.markClean();
  t.equal(decodeOverlayHeader(readFileSync(path)).dirty, false);
  await ov.close();
  await ov.close();

  const again = await OverlayFile.open(path, identity);
  t.equal(again.wasDirty, false);
  t.equal(again.map.get(3), BLOCK_DATA);
  t.equal(again.map.get(5), BLOCK_ZERO);
  t.equal(again.map.get(4), 0);
  const buf = Buffer.alloc(10);
  await again.readData(4096 * 3 + 100, buf);
  t.same(buf, Buffer.alloc(10, 0x33));
  await again.markDirty();
  t.equal(decodeOverlayHeader(readFileSync(path)).dirty, true);
  await again.delete();
  t.notOk(existsSync(path), 'deleted');
  await again.delete();
});

t.test('an overlay made for another base is refused, nothing changed on disk', async (t) => {
  const path = join(t.testdir(), 'o.cow');
  const ov = await OverlayFile.create(path, { blockSize: 4096, size: identity.size, baseIdentity: identity });
  await ov.close();
  const before = readFileSync(path);
  const other = { size: identity.size, fingerprint: 'cd'.repeat(32) };
  await t.rejects(OverlayFile.open(path, other), {
    code: 'EINVAL',
    message:
      /^overlay .*o\.cow belongs to another base image: made for \(size 100000, fingerprint abababab.*\), the base is \(size 100000, fingerprint cdcdcdcd.*\)$/,
  });
  await t.rejects(OverlayFile.open(path, { ...identity, size: 5 }), { message: /size 100000.*size 5/ });
  t.ok(readFileSync(path).equals(before), 'file untouched');
});

t.test('a corrupt overlay is refused', async (t) => {
  const dir = t.testdir();
  const junk = join(dir, 'junk.cow');
  writeFileSync(junk, Buffer.alloc(200, 0x41));
  await t.rejects(OverlayFile.open(junk, identity), { message: /junk\.cow: overlay header: bad magic/ });
  const path = join(dir, 'o.cow');
  const ov = await OverlayFile.create(path, { blockSize: 4096, size: identity.size, baseIdentity: identity });
  await ov.close();
  const bytes = readFileSync(path);
  bytes[4096] = 0b11; // block 0 in the invalid state 3
  writeFileSync(path, bytes);
  await t.rejects(OverlayFile.open(path, identity), { message: /invalid state for block 0/ });
  await t.rejects(OverlayFile.open(join(dir, 'missing.cow'), identity), { code: 'ENOENT' });
});
