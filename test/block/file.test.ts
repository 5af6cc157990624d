import fs, { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import {
  closeFile,
  listDirectory,
  O_CREAT_EXCL_RDWR,
  O_RDONLY,
  O_RDWR,
  openFile,
  readAt,
  remainingChunks,
  statFile,
  syncData,
  truncateFile,
  unlinkFile,
  writeAt,
  writevAt,
} from '../../lib/block/file.js';

t.test('writeAt then readAt round-trips at a position', async (t) => {
  const dir = t.testdir();
  const path = join(dir, 'f');
  const fd = await openFile(path, O_CREAT_EXCL_RDWR);
  await writeAt(fd, Buffer.from('hello'), 10);
  const buf = Buffer.alloc(5);
  await readAt(fd, buf, 10);
  t.equal(buf.toString(), 'hello');
  await syncData(fd);
  t.equal((await statFile(fd)).size, 15);
  await closeFile(fd);
  t.same(readFileSync(path).subarray(0, 10), Buffer.alloc(10), 'the gap is a hole of zeros');
});

t.test('readAt zero-fills past the end of the file', async (t) => {
  const path = join(t.testdir(), 'f');
  writeFileSync(path, Buffer.from('abc'));
  const fd = await openFile(path, O_RDONLY);
  const buf = Buffer.alloc(6, 0xff);
  await readAt(fd, buf, 1);
  t.same(buf, Buffer.from([0x62, 0x63, 0, 0, 0, 0]));
  const far = Buffer.alloc(4, 0xff);
  await readAt(fd, far, 1000);
  t.same(far, Buffer.alloc(4));
  await closeFile(fd);
});

t.test('a large buffer is read and written whole', async (t) => {
  const path = join(t.testdir(), 'f');
  const fd = await openFile(path, O_CREAT_EXCL_RDWR);
  const data = Buffer.alloc(3 * 1024 * 1024 + 7);
  for (let i = 0; i < data.length; i++) data[i] = i % 251;
  await writeAt(fd, data, 4096);
  const back = Buffer.alloc(data.length);
  await readAt(fd, back, 4096);
  t.ok(back.equals(data));
  await closeFile(fd);
});

t.test('truncate, list, unlink and O_EXCL', async (t) => {
  const dir = t.testdir();
  const path = join(dir, 'f');
  const fd = await openFile(path, O_CREAT_EXCL_RDWR);
  await truncateFile(fd, 8192);
  t.equal(statSync(path).size, 8192);
  t.equal(statSync(path).mode & 0o777, 0o600, 'created with mode 0600');
  await closeFile(fd);
  await t.rejects(openFile(path, O_CREAT_EXCL_RDWR), { code: 'EEXIST' });
  t.same(await listDirectory(dir), ['f']);
  await unlinkFile(path);
  t.same(await listDirectory(dir), []);
  await t.rejects(openFile(path, O_RDWR), { code: 'ENOENT', path });
});

t.test('large writes to one descriptor go to the kernel one at a time, in issue order', async (t) => {
  const path = join(t.testdir(), 'f');
  const fd = await openFile(path, O_CREAT_EXCL_RDWR);
  const other = await openFile(join(t.testdir(), 'g'), O_CREAT_EXCL_RDWR);
  // Count write(2)/writev(2) calls in flight per descriptor by wrapping fs.write and fs.writev
  // (file.ts looks them up at each call).
  const real = { write: fs.write, writev: fs.writev };
  const inFlight = new Map<number, number>();
  const most = new Map<number, number>();
  const counted =
    (call: (...a: unknown[]) => void) =>
    (...args: unknown[]) => {
      const d = args[0] as number;
      const done = args[args.length - 1] as (...r: unknown[]) => void;
      inFlight.set(d, (inFlight.get(d) ?? 0) + 1);
      most.set(d, Math.max(most.get(d) ?? 0, inFlight.get(d) ?? 0));
      args[args.length - 1] = (...r: unknown[]) => {
        inFlight.set(d, (inFlight.get(d) ?? 1) - 1);
        done(...r);
      };
      return call(...args);
    };
  const restore = (): void => {
    Object.assign(fs, real);
  };
  Object.assign(fs, {
    write: counted(real.write as (...a: unknown[]) => void),
    writev: counted(real.writev as (...a: unknown[]) => void),
  });
  t.teardown(restore);
  const size = 256 * 1024; // above the synchronous limit
  // Overlapping writes of different bytes: only issue order makes the last one win.
  const writes = Array.from({ length: 12 }, (_, i) => writeAt(fd, Buffer.alloc(size, i + 1), (i % 3) * 4096));
  const elsewhere = Array.from({ length: 4 }, () => writeAt(other, Buffer.alloc(size, 1), 0));
  // A failing write in the middle (EFBIG: far past the largest file) rejects on its own...
  const failing = writeAt(fd, Buffer.alloc(size, 0xee), 2 ** 52);
  // ...and the writes queued after it still run.
  const after = writeAt(fd, Buffer.alloc(size, 0xaa), 8192);
  await Promise.all([...writes, ...elsewhere]);
  await t.rejects(failing);
  await after;
  restore();
  t.equal(most.get(fd), 1, 'one write in flight at a time on the descriptor');
  t.equal(most.get(other), 1, 'and on the other descriptor');
  const back = Buffer.alloc(8192 + size);
  await readAt(fd, back, 0);
  t.equal(back[0], 10, 'bytes only the 10th write (offset 0) reaches come from it');
  t.equal(back[4096], 11, 'then the 11th (offset 4096)');
  t.ok(back.subarray(8192).equals(Buffer.alloc(size, 0xaa)), 'the write queued after the failure ran last');
  await closeFile(fd);
  await closeFile(other);
});

t.test('writevAt writes the concatenation of its pieces, however many', async (t) => {
  const path = join(t.testdir(), 'f');
  const fd = await openFile(path, O_CREAT_EXCL_RDWR);
  // More pieces than one writev takes (1,024), some empty, 150 KB in all: the queued path.
  const pieces = Array.from({ length: 1500 }, (_, i) => Buffer.alloc(i % 7 === 0 ? 0 : 117, i % 251));
  const whole = Buffer.concat(pieces);
  await writevAt(fd, pieces, 4096);
  const back = Buffer.alloc(whole.length);
  await readAt(fd, back, 4096);
  t.ok(back.equals(whole), `${whole.length} bytes in ${pieces.length} pieces read back`);
  // A small total goes through writeAt (and its synchronous fast path).
  await writevAt(fd, [Buffer.from('ab'), Buffer.from('cd')], 1);
  const small = Buffer.alloc(4);
  await readAt(fd, small, 1);
  t.equal(small.toString(), 'abcd');
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
