import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import {
  readFullyInline,
  readFullyInThreadpool,
  remainingChunks,
  writeFullyInline,
  writevFullyInThreadpool,
} from '../../lib/block/positional-io.js';
import { closeFile, O_CREAT_EXCL_RDWR, O_RDONLY, openFile } from '../../lib/block/syscalls.js';

t.test('inline write then both reads round-trip at a position; the gap is a hole of zeros', async (t) => {
  const path = join(t.testdir(), 'f');
  const fd = await openFile(path, O_CREAT_EXCL_RDWR);
  writeFullyInline(fd, Buffer.from('hello'), 10);
  const inline = Buffer.alloc(5);
  readFullyInline(fd, inline, 10);
  const pooled = Buffer.alloc(5);
  await readFullyInThreadpool(fd, pooled, 10);
  t.equal(inline.toString(), 'hello');
  t.equal(pooled.toString(), 'hello');
  await closeFile(fd);
  t.same(readFileSync(path).subarray(0, 10), Buffer.alloc(10));
});

t.test('both reads zero-fill past the end of the file', async (t) => {
  const path = join(t.testdir(), 'f');
  writeFileSync(path, Buffer.from('abc'));
  const fd = await openFile(path, O_RDONLY);
  for (const read of [
    async (buf: Buffer, at: number) => readFullyInline(fd, buf, at),
    (buf: Buffer, at: number) => readFullyInThreadpool(fd, buf, at),
  ]) {
    const buf = Buffer.alloc(6, 0xff);
    await read(buf, 1);
    t.same(buf, Buffer.from([0x62, 0x63, 0, 0, 0, 0]));
    const far = Buffer.alloc(4, 0xff);
    await read(far, 1000);
    t.same(far, Buffer.alloc(4));
  }
  await closeFile(fd);
});

t.test('writevFullyInThreadpool writes the concatenation of its pieces, however many', async (t) => {
  const path = join(t.testdir(), 'f');
  const fd = await openFile(path, O_CREAT_EXCL_RDWR);
  // More pieces than one writev takes (1,024), some empty.
  const pieces = Array.from({ length: 1500 }, (_, i) => Buffer.alloc(i % 7 === 0 ? 0 : 117, i % 251));
  const whole = Buffer.concat(pieces);
  await writevFullyInThreadpool(fd, pieces, 4096);
  await closeFile(fd);
  t.ok(readFileSync(path).subarray(4096).equals(whole), `${whole.length} bytes in ${pieces.length} pieces read back`);
});

t.test('a write far past the largest file fails with the system error', async (t) => {
  const fd = await openFile(join(t.testdir(), 'f'), O_CREAT_EXCL_RDWR);
  t.throws(() => writeFullyInline(fd, Buffer.alloc(10), 2 ** 52), { code: /EFBIG|EINVAL/ });
  await t.rejects(writevFullyInThreadpool(fd, [Buffer.alloc(10)], 2 ** 52), { code: /EFBIG|EINVAL/ });
  await closeFile(fd);
});

t.test('remainingChunks: what is left after a short writev', async (t) => {
  const pieces = [Buffer.from('abc'), Buffer.from('de'), Buffer.from('fghi')];
  const text = (chunks: Buffer[]) => chunks.map((c) => c.toString()).join('|');
  t.equal(text(remainingChunks(pieces, 0)), 'abc|de|fghi');
  t.equal(text(remainingChunks(pieces, 2)), 'c|de|fghi');
  t.equal(text(remainingChunks(pieces, 3)), 'de|fghi');
  t.equal(text(remainingChunks(pieces, 6)), 'ghi');
  t.equal(text(remainingChunks(pieces, 9)), '');
});
