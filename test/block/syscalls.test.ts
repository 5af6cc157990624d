import { statSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import {
  closeFile,
  listDirectory,
  O_CREAT_EXCL_RDWR,
  O_RDWR,
  openFile,
  statFile,
  syncData,
  truncateFile,
  unlinkFile,
} from '../../lib/block/syscalls.js';

t.test('truncate, stat, sync, list, unlink and O_EXCL', async (t) => {
  const dir = t.testdir();
  const path = join(dir, 'f');
  const fd = await openFile(path, O_CREAT_EXCL_RDWR);
  await truncateFile(fd, 8192);
  await syncData(fd);
  t.equal((await statFile(fd)).size, 8192);
  t.equal(statSync(path).mode & 0o777, 0o600, 'created with mode 0600');
  await closeFile(fd);
  await t.rejects(openFile(path, O_CREAT_EXCL_RDWR), { code: 'EEXIST' });
  t.same(await listDirectory(dir), ['f']);
  await unlinkFile(path);
  t.same(await listDirectory(dir), []);
  await t.rejects(openFile(path, O_RDWR), { code: 'ENOENT', path }, 'errors name the path');
  await t.rejects(unlinkFile(path), { code: 'ENOENT', path });
  await t.rejects(listDirectory(path), { code: 'ENOENT', path });
});
