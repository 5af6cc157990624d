import { chmodSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { FINGERPRINT_WINDOW, fingerprintWindows, openBase } from '../../lib/block/base-image.js';
import { makeBase, sha256File } from './helpers.js';

t.test('reads the base and zero-fills past its end', async (t) => {
  const { path, bytes } = makeBase(t.testdir(), 10_000);
  const base = await openBase(path);
  t.teardown(() => base.close());
  t.equal(base.size, 10_000);
  t.equal(base.identity.size, 10_000);
  t.match(base.identity.fingerprint, /^[0-9a-f]{64}$/);
  const dest = Buffer.alloc(100);
  await base.read(9_950, dest.subarray(0, 50));
  t.same(dest.subarray(0, 50), bytes.subarray(9_950));
  const edge = Buffer.alloc(100, 0xff);
  await base.read(9_950, edge);
  t.same(edge.subarray(50), Buffer.alloc(50), 'a whole last block read zero-fills');
});

t.test('fingerprint: deterministic, sensitive to size and sampled content', async (t) => {
  const dir = t.testdir();
  const a = makeBase(dir, 5000, 7, 'a.img');
  const b = makeBase(dir, 5000, 7, 'b.img');
  const c = makeBase(dir, 5001, 7, 'c.img');
  const changed = Buffer.from(a.bytes);
  changed[4999] = (changed[4999] ?? 0) ^ 1;
  writeFileSync(join(dir, 'd.img'), changed);
  const fps = await Promise.all(
    ['a.img', 'b.img', 'c.img', 'd.img'].map(async (name) => {
      const base = await openBase(join(dir, name));
      await base.close();
      return base.identity.fingerprint;
    }),
  );
  t.equal(fps[0], fps[1], 'same content, same fingerprint');
  t.not(fps[0], fps[2], 'size counts');
  t.not(fps[0], fps[3], 'content counts');
  t.equal(b.path, join(dir, 'b.img'));
  t.equal(c.bytes.length, 5001);
});

t.test('fingerprint windows: whole small files, 18 windows on large ones', async (t) => {
  t.same(fingerprintWindows(0), []);
  t.same(fingerprintWindows(18 * FINGERPRINT_WINDOW), [0]);
  const big = 10 * 1024 ** 3;
  const w = fingerprintWindows(big);
  t.equal(w.length, 18);
  t.equal(w[0], 0);
  t.equal(w[17], big - FINGERPRINT_WINDOW);
  t.ok(
    w.every((s, i) => i === 0 || s > (w[i - 1] ?? 0)),
    'increasing',
  );
});

t.test('fingerprint of a large sparse file reads only samples', async (t) => {
  const path = join(t.testdir(), 'sparse.img');
  writeFileSync(path, '');
  const { truncateSync } = await import('node:fs');
  truncateSync(path, 4 * 1024 ** 3);
  const base = await openBase(path);
  t.equal(base.size, 4 * 1024 ** 3);
  await base.close();
});

t.test('the base is a read-only BlockDevice', async (t) => {
  const { path, bytes } = makeBase(t.testdir(), 3000);
  const before = sha256File(path);
  const base = await openBase(path);
  t.equal(base.writable, false);
  const opts = { fua: false };
  await t.rejects(base.write(0, Buffer.alloc(1), opts), { code: 'EPERM' });
  await t.rejects(base.zero(0, 1, { fua: false, noHole: false }), { code: 'EPERM' });
  await t.rejects(base.trim(0, 1, opts), { code: 'EPERM' });
  await base.flush();
  await base.cache(0, 3000);
  t.same(await base.extents(100, 5000, 10), [{ length: 2900, state: 'base', depth: 1 }]);
  t.same(await base.extents(0, 10, 10), [{ length: 10, state: 'base', depth: 1 }]);
  const all = Buffer.alloc(3000);
  await base.read(0, all);
  t.ok(all.equals(bytes));
  await base.close();
  await base.close();
  await t.rejects(base.read(0, Buffer.alloc(1)), { code: 'ESHUTDOWN' });
  t.equal(sha256File(path), before, 'base unchanged');
});

t.test('open errors are one line naming the path and the cause', async (t) => {
  const dir = t.testdir({ sub: {} });
  const missing = join(dir, 'nope.img');
  await t.rejects(openBase(missing), { code: 'ENOENT', message: `cannot open base image ${missing}: no such file (ENOENT)` });
  await t.rejects(openBase(join(dir, 'sub')), {
    code: 'EISDIR',
    message: /cannot open base image .*sub: is a directory \(EISDIR\)$/,
  });
  if (process.getuid?.() !== 0) {
    const locked = join(dir, 'locked.img');
    writeFileSync(locked, 'x');
    chmodSync(locked, 0o000);
    await t.rejects(openBase(locked), { code: 'EACCES', message: /permission denied/ });
  }
  try {
    await openBase(missing);
  } catch (err) {
    t.notMatch((err as Error).message, /\n/, 'one line');
  }
});
