import { randomBytes } from 'node:crypto';
import { closeSync, copyFileSync, mkdirSync, openSync, readdirSync, readFileSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import t from 'tap';
import { BlockCache, type BlockCacheOptions, ENTRY_BYTES, MAP_HEADER_BYTES } from '../../lib/remote/block-cache.js';

const BS = 4096;
const IMAGE = BS * 10 + 1000; // ten whole blocks and a short last one

function options(dir: string, warnings: string[], more: Partial<BlockCacheOptions> = {}): BlockCacheOptions {
  return {
    dir,
    stem: 'img-0123',
    identity: { size: IMAGE, fingerprint: 'a'.repeat(64) },
    blockSize: BS,
    capacity: IMAGE,
    warn: (message) => warnings.push(message),
    ...more,
  };
}

/** The bytes of `block` in a made-up image. */
function blockData(block: number, size = IMAGE): Buffer {
  const length = Math.min(BS, size - block * BS);
  return Buffer.alloc(length, block + 1);
}

/** Rewrite the text of the map's header with `edit`. */
function editHeader(dir: string, edit: (text: string) => string): void {
  const path = join(dir, 'img-0123.map');
  const text = readFileSync(path).subarray(0, MAP_HEADER_BYTES).toString('utf8').replace(/\0+$/, '');
  const header = Buffer.alloc(MAP_HEADER_BYTES);
  header.write(edit(text), 'utf8');
  const fd = openSync(path, 'r+');
  writeSync(fd, header, 0, MAP_HEADER_BYTES, 0);
  closeSync(fd);
}

async function readBlock(cache: BlockCache, block: number, length = BS): Promise<Buffer | undefined> {
  const dest = Buffer.alloc(length);
  const reading = cache.read(block, 0, dest);
  if (reading === undefined) return undefined;
  await reading;
  return dest;
}

/** A map entry as the cache writes one: the block + 1, its last use, the CRC-32 of those 16 bytes. */
function entryBytes(block: number, lastUse: number): Buffer {
  const entry = Buffer.alloc(ENTRY_BYTES);
  entry.writeBigUInt64BE(BigInt(block + 1), 0);
  entry.writeDoubleBE(lastUse, 8);
  entry.writeUInt32BE(crc32(entry.subarray(0, 16)), 16);
  return entry;
}

function writeAt(path: string, bytes: Buffer, position: number): void {
  const fd = openSync(path, 'r+');
  writeSync(fd, bytes, 0, bytes.length, position);
  closeSync(fd);
}

/** The map's entries as they are on disk now, by slot. */
function entriesOnDisk(dir: string): Buffer[] {
  const table = readFileSync(join(dir, 'img-0123.map')).subarray(MAP_HEADER_BYTES);
  return Array.from({ length: Math.floor(table.length / ENTRY_BYTES) }, (_, i) =>
    table.subarray(i * ENTRY_BYTES, (i + 1) * ENTRY_BYTES),
  );
}

/** What a process killed now leaves in `dir` (its writes are in the page cache), copied to the new directory `copy`. */
function copyAsCrashed(dir: string, copy: string): string {
  mkdirSync(copy);
  for (const name of ['img-0123.data', 'img-0123.map']) copyFileSync(join(dir, name), join(copy, name));
  return copy;
}

t.test('stored blocks read back, in part too, and survive a reopen', async (t) => {
  const dir = t.testdir();
  const warnings: string[] = [];
  const cache = await BlockCache.open(options(dir, warnings));
  t.equal(cache.slots, 11, 'one slot per block of the image when the capacity covers it');
  t.notOk(cache.has(3));
  t.equal(await readBlock(cache, 3), undefined, 'a block not held reads as a miss');
  await cache.store(3, blockData(3));
  await cache.store(10, blockData(10));
  t.ok(cache.has(3));
  t.same(await readBlock(cache, 3), blockData(3));
  const part = Buffer.alloc(100);
  await cache.read(3, 50, part);
  t.same(part, blockData(3).subarray(50, 150), 'a part of a block from its offset');
  t.same(await readBlock(cache, 10, 1000), blockData(10), 'the short last block');
  await cache.close();
  t.same(readdirSync(dir).sort(), ['img-0123.data', 'img-0123.map'], 'the lock goes at close');

  const again = await BlockCache.open(options(dir, warnings));
  t.equal(again.cachedBlocks, 2);
  t.same(await readBlock(again, 3), blockData(3), 'served after a reopen');
  t.same(await readBlock(again, 10, 1000), blockData(10));
  await again.close();
  t.same(warnings, []);
});

t.test('a second process (or server) on the same cache is refused', async (t) => {
  const dir = t.testdir();
  const cache = await BlockCache.open(options(dir, []));
  await t.rejects(BlockCache.open(options(dir, [])), { code: 'EBUSY', message: /in use by this process/ });
  await cache.close();
});

t.test('past the capacity, the least recently used block goes', async (t) => {
  const dir = t.testdir();
  const cache = await BlockCache.open(options(dir, [], { capacity: 3 * BS }));
  t.equal(cache.slots, 3);
  for (const block of [0, 1, 2]) await cache.store(block, blockData(block));
  t.ok(await readBlock(cache, 0), 'block 0 used again: now 1 is the oldest');
  await cache.store(5, blockData(5));
  t.same(
    [0, 1, 2, 5].map((b) => cache.has(b)),
    [true, false, true, true],
  );
  t.ok(statSync(join(dir, 'img-0123.data')).size <= 3 * BS, 'the data file never grows past the capacity');
  await cache.close();

  // The order is kept across a restart: 2 is now the oldest.
  const again = await BlockCache.open(options(dir, [], { capacity: 3 * BS }));
  await again.store(7, blockData(7));
  t.same(
    [0, 2, 5, 7].map((b) => again.has(b)),
    [true, false, true, true],
  );
  t.same(await readBlock(again, 7), blockData(7));
  await again.close();
});

t.test('a crash: the blocks kept by the last checkpoint are served, the ones kept since are fetched again', async (t) => {
  const root = t.testdir();
  const dir = join(root, 'live');
  const cache = await BlockCache.open(options(dir, [], { checkpointBytes: 3 * BS }));
  await cache.store(0, Buffer.concat([blockData(0), blockData(1)]));
  t.same(
    entriesOnDisk(dir).filter((e) => e.some((b) => b !== 0)),
    [],
    'no entry is written with its block',
  );
  const atStart = copyAsCrashed(dir, join(root, 'killed-at-start'));
  await cache.store(2, blockData(2)); // the third block: a checkpoint
  await new Promise((resolve) => setTimeout(resolve, 100));
  await cache.store(5, blockData(5));
  const afterCheckpoint = copyAsCrashed(dir, join(root, 'killed-after-checkpoint'));
  await cache.close();

  const warnings: string[] = [];
  const empty = await BlockCache.open(options(atStart, warnings));
  t.equal(empty.cachedBlocks, 0, 'killed before the first checkpoint: nothing is held');
  await empty.close();
  const crashed = await BlockCache.open(options(afterCheckpoint, warnings));
  t.same(
    [0, 1, 2, 5].map((b) => crashed.has(b)),
    [true, true, true, false],
    'killed after it: the blocks of the checkpoint are held, the one kept since is not',
  );
  for (const b of [0, 1, 2]) t.same(await readBlock(crashed, b), blockData(b), `block ${b} is served as it was kept`);
  await crashed.close();
  t.same(warnings, [], 'nothing to say about a crash: no entry names data that is not on disk');
});

t.test('once no block was kept for 2 s, a checkpoint puts the kept blocks in the map', async (t) => {
  const root = t.testdir();
  const dir = join(root, 'live');
  const cache = await BlockCache.open(options(dir, []));
  await cache.store(4, blockData(4));
  await new Promise((resolve) => setTimeout(resolve, 1500));
  await cache.store(6, blockData(6)); // kept within the 2 s: the checkpoint waits again
  await new Promise((resolve) => setTimeout(resolve, 1000));
  const busy = copyAsCrashed(dir, join(root, 'killed-while-busy'));
  await new Promise((resolve) => setTimeout(resolve, 2000));
  const quiet = copyAsCrashed(dir, join(root, 'killed-once-quiet'));
  await cache.close();
  const before = await BlockCache.open(options(busy, []));
  t.equal(before.cachedBlocks, 0, 'blocks kept less than 2 s apart: no checkpoint yet');
  await before.close();
  const after = await BlockCache.open(options(quiet, []));
  t.same([after.has(4), after.has(6)], [true, true], '2 s after the last one: both in the map');
  t.same(await readBlock(after, 6), blockData(6));
  await after.close();
});

t.test('an entry that fails its CRC (torn by a crash) is not taken, and is zeroed on disk', async (t) => {
  const dir = t.testdir();
  const cache = await BlockCache.open(options(dir, []));
  for (const block of [0, 1, 2]) await cache.store(block, blockData(block));
  await cache.close();
  const slot = entriesOnDisk(dir).findIndex((e) => e.readBigUInt64BE(0) === 2n);
  t.ok(slot >= 0, 'block 1 has an entry');
  const torn = Buffer.from(entriesOnDisk(dir)[slot] as Buffer);
  torn[12] = (torn[12] as number) ^ 0xff; // a byte of its last use
  writeAt(join(dir, 'img-0123.map'), torn, MAP_HEADER_BYTES + slot * ENTRY_BYTES);
  const warnings: string[] = [];
  const again = await BlockCache.open(options(dir, warnings));
  t.same(
    [0, 1, 2].map((b) => again.has(b)),
    [true, false, true],
  );
  t.same(entriesOnDisk(dir)[slot], Buffer.alloc(ENTRY_BYTES), 'zeroed, so that no later write brings it back');
  t.same(warnings, []);
  await again.close();
});

t.test('a map made for another image version, block size or capacity is discarded', async (t) => {
  const dir = t.testdir();
  const warnings: string[] = [];
  const cache = await BlockCache.open(options(dir, warnings));
  await cache.store(1, blockData(1));
  await cache.close();
  const other = await BlockCache.open(options(dir, warnings, { identity: { size: IMAGE, fingerprint: 'b'.repeat(64) } }));
  t.equal(other.cachedBlocks, 0, 'another version: empty');
  t.equal(statSync(join(dir, 'img-0123.data')).size, 0, 'its data is gone');
  t.match(warnings, [/made for another image version or size; starting empty/]);
  await other.close();
  const smaller = await BlockCache.open(
    options(dir, [], { identity: { size: IMAGE, fingerprint: 'b'.repeat(64) }, capacity: 4 * BS }),
  );
  t.equal(smaller.slots, 4);
  t.equal(smaller.cachedBlocks, 0);
  await smaller.close();
});

t.test('a map of version 2 (a CRC-32 per block) is discarded, with a word', async (t) => {
  const dir = t.testdir();
  const cache = await BlockCache.open(options(dir, []));
  await cache.store(2, blockData(2));
  await cache.close();
  // Version 2's header, as an older nbd-cow wrote it, over this map.
  editHeader(dir, (text) => text.replace('nbd-cow block cache v3', 'nbd-cow block cache v2'));
  const warnings: string[] = [];
  const again = await BlockCache.open(options(dir, warnings));
  t.equal(again.cachedBlocks, 0, 'nothing of it is trusted');
  t.equal(statSync(join(dir, 'img-0123.data')).size, 0, 'its data is gone');
  t.match(warnings, [/made by another version of nbd-cow; starting empty/]);
  await again.store(2, blockData(2));
  await again.close();
  const reopened = await BlockCache.open(options(dir, []));
  t.same(await readBlock(reopened, 2), blockData(2), 'the new map works across a restart');
  await reopened.close();
});

t.test('a map that is not one (damaged header, bad entries) starts empty without a word', async (t) => {
  const dir = t.testdir();
  const cache = await BlockCache.open(options(dir, []));
  await cache.store(2, blockData(2));
  await cache.close();
  // An entry naming a block past the image, and one repeating block 2.
  writeAt(join(dir, 'img-0123.map'), entryBytes(999, 1), MAP_HEADER_BYTES + 5 * ENTRY_BYTES);
  writeAt(join(dir, 'img-0123.map'), entryBytes(2, 1), MAP_HEADER_BYTES + 7 * ENTRY_BYTES);
  const again = await BlockCache.open(options(dir, []));
  t.equal(again.cachedBlocks, 1, 'the entry past the image and the repeated one are ignored');
  t.same(await readBlock(again, 2), blockData(2));
  await again.close();
  const fd2 = openSync(join(dir, 'img-0123.map'), 'r+');
  writeSync(fd2, randomBytes(64), 0, 64, 0);
  closeSync(fd2);
  const warnings: string[] = [];
  const fresh = await BlockCache.open(options(dir, warnings));
  t.equal(fresh.cachedBlocks, 0);
  t.same(warnings, [], 'a header that is not ours is not another version: nothing to say');
  await fresh.close();
});

t.test('a store after close, or of a block already held, is a no-op', async (t) => {
  const dir = t.testdir();
  const cache = await BlockCache.open(options(dir, []));
  await cache.store(1, blockData(1));
  await cache.store(1, Buffer.alloc(BS, 0xee));
  t.same(await readBlock(cache, 1), blockData(1), 'the first copy stays');
  await cache.close();
  await cache.store(2, blockData(2));
  t.notOk(cache.has(2));
});

t.test('a cache directory that cannot be made is one line naming it', async (t) => {
  const file = join(t.testdir(), 'not-a-dir');
  closeSync(openSync(file, 'w'));
  await t.rejects(BlockCache.open(options(join(file, 'sub'), [])), { code: 'ENOTDIR' });
});

t.test('a span of blocks in consecutive slots is read at once; anything else is left to read()', async (t) => {
  const dir = t.testdir();
  const cache = await BlockCache.open(options(dir, []));
  for (const block of [2, 3, 4]) await cache.store(block, blockData(block));
  await cache.store(6, blockData(6));
  const dest = Buffer.alloc(2 * BS);
  const span = cache.readSpan(2, 3, BS / 2, dest);
  t.ok(span, 'blocks 2-4 sit in slots in a row');
  await span;
  t.same(dest, Buffer.concat([blockData(2), blockData(3), blockData(4)]).subarray(BS / 2, BS / 2 + 2 * BS));
  t.equal(cache.readSpan(4, 3, 0, Buffer.alloc(3 * BS)), undefined, 'block 5 is not held');
  t.equal(cache.readSpan(8, 1, 0, Buffer.alloc(BS)), undefined);
  await cache.close();
  const again = await BlockCache.open(options(dir, []));
  t.ok(again.readSpan(2, 3, 0, Buffer.alloc(3 * BS)), 'after a reopen too');
  await again.close();
});

t.test('a store of several blocks: blocks already held are left, the rest kept, one map write per run', async (t) => {
  const dir = t.testdir();
  const cache = await BlockCache.open(options(dir, []));
  await cache.store(5, blockData(5));
  const run = Buffer.concat([3, 4, 5, 6, 7, 8, 9, 10].map((b) => (b === 5 ? Buffer.alloc(BS, 0xee) : blockData(b))));
  await cache.store(3, run);
  for (const b of [3, 4, 5, 6, 7, 8, 9, 10]) {
    t.same(await readBlock(cache, b, b === 10 ? 1000 : BS), blockData(b), `block ${b}`);
  }
  t.equal(cache.cachedBlocks, 8);
  const dest = Buffer.alloc(2 * BS);
  t.ok(cache.readSpan(6, 2, 0, dest), 'blocks stored together sit in consecutive slots');
  await cache.close();
  const again = await BlockCache.open(options(dir, []));
  for (const b of [3, 4, 6, 9]) t.same(await readBlock(again, b), blockData(b), `block ${b} after a reopen`);
  await again.close();
});

t.test('a store of several blocks past the capacity keeps what fits, evicting the oldest', async (t) => {
  const dir = t.testdir();
  const cache = await BlockCache.open(options(dir, [], { capacity: 3 * BS }));
  await cache.store(0, blockData(0));
  await cache.store(4, Buffer.concat([4, 5, 6, 7].map((b) => blockData(b))));
  t.same(
    [0, 4, 5, 6, 7].map((b) => cache.has(b)),
    [false, true, true, true, false],
    'three slots: block 0 evicted for 6, and nothing for 7 while 4-6 are being written',
  );
  for (const b of [4, 5, 6]) t.same(await readBlock(cache, b), blockData(b));
  await cache.close();
});
