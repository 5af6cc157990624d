import t, { type Test } from 'tap';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { openBase } from '../../lib/block/base-image.js';
import { NamedOverlays } from '../../lib/block/named-overlays.js';
import { makeBase, sha256File } from './helpers.js';

const W = { fua: false };

async function setup(t: Test, seed = 1) {
  const dir = t.testdir();
  const { path } = makeBase(dir, 64 * 1024 + 100, seed);
  const base = await openBase(path);
  const warnings: string[] = [];
  const named = new NamedOverlays({ base, blockSize: 4096, dir, warn: (m) => warnings.push(m) });
  t.teardown(async () => {
    await named.closeAll();
    await base.close();
  });
  return { dir, base, named, warnings };
}

t.test('connections share one device; the last close keeps the file and drops the lock', async (t) => {
  const { dir, named } = await setup(t);
  const a = named.attach('golden', 'x');
  const b = named.attach('golden', 'x');
  t.ok(existsSync(join(dir, 'named-golden@x.cow.lock')), 'locked at attach');
  t.notOk(existsSync(join(dir, 'named-golden@x.cow')), 'no file before the first write');
  await a.write(100, Buffer.from('hello'), W);
  const got = Buffer.alloc(5);
  await b.read(100, got);
  t.equal(got.toString(), 'hello', 'b reads a\'s write at once');
  await a.close();
  await a.close();
  await b.read(100, got);
  t.equal(got.toString(), 'hello', 'b still works after a closed');
  await t.rejects(a.read(0, got), { code: 'ESHUTDOWN' }, 'a closed handle refuses I/O');
  t.equal(named.openCount, 1);
  await b.close();
  t.equal(named.openCount, 0, 'closed with its last connection');
  t.ok(existsSync(join(dir, 'named-golden@x.cow')), 'the file is kept');
  t.notOk(existsSync(join(dir, 'named-golden@x.cow.lock')), 'the lock is released');

  const c = named.attach('golden', 'x');
  await c.read(100, got);
  t.equal(got.toString(), 'hello', 'reopened with its data');
  await c.close();
});

t.test('a GO during the last close reopens once that close is done', async (t) => {
  const { named } = await setup(t);
  const a = named.attach('golden', 'y');
  await a.write(0, Buffer.alloc(4096, 9), W);
  const closing = a.close();
  const b = named.attach('golden', 'y');
  const got = Buffer.alloc(4096);
  await b.read(0, got);
  t.same(got, Buffer.alloc(4096, 9), 'the reopened overlay has the data');
  await b.write(4096, Buffer.alloc(10, 1), W);
  await closing;
  await b.close();
  t.equal(named.openCount, 0);
});

t.test('refusals at attach: held by another process, another base; nothing changes on disk', async (t) => {
  const { dir, named, base, warnings } = await setup(t);
  writeFileSync(join(dir, 'named-golden@busy.cow.lock'), '1\n');
  t.throws(() => named.attach('golden', 'busy'), { code: 'EBUSY', message: /named overlay golden@busy is in use by process 1/ });
  t.match(warnings.join('\n'), /refused golden@busy/, 'logged');

  const dev = named.attach('golden', 'z');
  await dev.write(0, Buffer.alloc(10, 1), W);
  await dev.close();
  const file = join(dir, 'named-golden@z.cow');
  const before = sha256File(file);
  const other = makeBase(dir, base.size, 99, 'other.img');
  const otherBase = await openBase(other.path);
  const wrong = new NamedOverlays({ base: otherBase, blockSize: 4096, dir });
  t.throws(() => wrong.attach('golden', 'z'), { code: 'EINVAL', message: /belongs to another base image: made for \(size \d+, fingerprint .*\), the base is/ });
  t.equal(sha256File(file), before, 'the overlay file is unchanged');
  t.notOk(existsSync(`${file}.lock`), 'and the lock is released again');
  await otherBase.close();

  writeFileSync(join(dir, 'named-golden@bad.cow'), 'garbage');
  t.throws(() => named.attach('golden', 'bad'), { code: 'EINVAL', message: /bad magic/ });
  t.throws(() => named.attach('golden', '../x'), RangeError);
});

t.test('an overlay left dirty by a crash is served, with a warning, and clean after close', async (t) => {
  const { dir, named, warnings } = await setup(t);
  const dev = named.attach('golden', 'c');
  await dev.write(0, Buffer.alloc(4096, 5), W);
  await dev.flush();
  await dev.write(4096, Buffer.alloc(4096, 6), W); // never flushed
  const file = join(dir, 'named-golden@c.cow');
  const crashed = readFileSync(file); // the file as a kill -9 would leave it
  await dev.close();
  writeFileSync(file, crashed);
  const again = named.attach('golden', 'c');
  t.match(warnings.join('\n'), /was not closed cleanly/);
  const got = Buffer.alloc(4096);
  await again.read(0, got);
  t.same(got, Buffer.alloc(4096, 5), 'the flushed write is there');
  await again.close();
  t.equal(readFileSync(file).readUInt32BE(20) & 1, 0, 'dirty flag cleared by the clean close');
});
