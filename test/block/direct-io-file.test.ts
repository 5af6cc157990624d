// The commit's output file with direct I/O beside buffered: aligned transfers go direct, the
// rest buffered, both views of the file agree, a transfer the file system refuses (EINVAL) goes
// buffered and so does every one after it, and a file system without O_DIRECT (tmpfs) is
// simply buffered. Page-aligned buffers come from aligned-buffer.ts.

import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { pageAlignedBuffer } from '../../lib/block/aligned-buffer.js';
import { DataFile } from '../../lib/block/data-file.js';
import { DIRECT_ALIGNMENT, DirectIoFile } from '../../lib/block/direct-io-file.js';
import { O_CREAT_EXCL_RDWR } from '../../lib/block/syscalls.js';
import { patternBytes } from './helpers.js';

const A = DIRECT_ALIGNMENT;

async function openPair(t: Test, dir: string): Promise<{ data: DataFile; file: DirectIoFile }> {
  const data = await DataFile.open(join(dir, 'out.img'), O_CREAT_EXCL_RDWR, 0o644);
  const file = await DirectIoFile.open(data);
  t.teardown(async () => {
    await file.close();
    await data.close();
  });
  return { data, file };
}

t.test('pageAlignedBuffer: the size asked, usable as any Buffer', async (t) => {
  for (const size of [1, A, 1024 * 1024 + 5]) {
    const buf = pageAlignedBuffer(size);
    t.equal(buf.length, size);
    buf.fill(7);
    t.equal(buf[size - 1], 7);
  }
});

t.test('aligned transfers go direct, unaligned ones buffered; both views agree', async (t) => {
  const dir = t.testdir();
  const { file } = await openPair(t, dir);
  if (!file.direct) {
    t.comment(`the file system under ${dir} has no O_DIRECT: only the buffered path is checked`);
  }
  const wasDirect = file.direct;
  const size = 64 * A + 1234;
  const expected = patternBytes(size, 3);
  await file.truncate(size);
  const aligned = pageAlignedBuffer(32 * A);
  expected.copy(aligned, 0, 16 * A, 48 * A);
  await file.write(aligned, 16 * A); // aligned: direct
  await file.write(expected.subarray(0, 16 * A - 100), 0); // unaligned length: buffered
  await file.write(expected.subarray(16 * A - 100, 16 * A), 16 * A - 100); // unaligned offset: buffered
  await file.write(expected.subarray(48 * A), 48 * A); // the partial tail: buffered
  t.equal(file.direct, wasDirect, 'no refusal along the way');
  t.ok(readFileSync(file.path).equals(expected), 'the file holds every write');
  const back = pageAlignedBuffer(size);
  await file.read(back.subarray(0, 64 * A), 0); // aligned: direct, from the disk
  await file.read(back.subarray(64 * A), 64 * A); // the tail: buffered
  t.ok(back.equals(expected), 'read back whole');
  await file.sync();
});

t.test('memory the device does not take direct: EINVAL, then buffered for good, nothing lost', async (t) => {
  const dir = t.testdir();
  const { file } = await openPair(t, dir);
  if (!file.direct) {
    t.comment(`the file system under ${dir} has no O_DIRECT: nothing to refuse`);
    return;
  }
  await file.truncate(4 * A);
  // One byte past an aligned start: an odd address, which no block device transfers direct.
  const odd = pageAlignedBuffer(2 * A + 1).subarray(1);
  odd.fill(0x5a);
  await file.write(odd, A);
  t.notOk(file.direct, 'refused once: buffered from now on');
  const aligned = pageAlignedBuffer(A).fill(0x33);
  await file.write(aligned, 3 * A);
  const expected = Buffer.concat([Buffer.alloc(A), Buffer.alloc(2 * A, 0x5a), Buffer.alloc(A, 0x33)]);
  t.ok(readFileSync(file.path).equals(expected), 'both writes landed');
  const back = pageAlignedBuffer(4 * A);
  await file.read(back, 0);
  t.ok(back.equals(expected));
});

t.test('a file system without O_DIRECT (tmpfs, if it refuses it) is buffered from the start', async (t) => {
  if (!existsSync('/dev/shm')) {
    t.comment('no /dev/shm here');
    return;
  }
  const dir = mkdtempSync('/dev/shm/nbd-cow-direct-');
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const { file } = await openPair(t, dir);
  t.comment(`tmpfs ${file.direct ? 'takes' : 'refuses'} O_DIRECT here`);
  const data = pageAlignedBuffer(8 * A).fill(9);
  await file.truncate(8 * A);
  await file.write(data, 0);
  t.ok(readFileSync(file.path).equals(data), 'the write landed either way');
});
