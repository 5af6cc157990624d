import t from 'tap';
import { readFileSync, writeFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import {
  closeFile,
  listDirectory,
  openFile,
  readAt,
  statFile,
  syncData,
  truncateFile,
  unlinkFile,
  writeAt,
  O_CREAT_EXCL_RDWR,
  O_RDONLY,
  O_RDWR,
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
