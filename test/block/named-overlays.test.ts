import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { openBase } from '../../lib/block/base-image.js';
import { NamedOverlays } from '../../lib/block/named-overlays.js';
import { SpaceBudget } from '../../lib/block/space-budget.js';
import { deadPid } from '../helpers/processes.js';
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
  const a = await named.attach('golden', 'x');
  const b = await named.attach('golden', 'x');
  t.ok(existsSync(join(dir, 'named-golden@x.cow.lock')), 'locked at attach');
  t.notOk(existsSync(join(dir, 'named-golden@x.cow')), 'no file before the first write');
  await a.write(100, Buffer.from('hello'), W);
  const got = Buffer.alloc(5);
  await b.read(100, got);
  t.equal(got.toString(), 'hello', "b reads a's write at once");
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

  const c = await named.attach('golden', 'x');
  await c.read(100, got);
  t.equal(got.toString(), 'hello', 'reopened with its data');
  await c.close();
});

t.test('a GO during the last close reopens once that close is done', async (t) => {
  const { named } = await setup(t);
  const a = await named.attach('golden', 'y');
  await a.write(0, Buffer.alloc(4096, 9), W);
  const closing = a.close();
  const b = await named.attach('golden', 'y');
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
  await t.rejects(named.attach('golden', 'busy'), { code: 'EBUSY', message: /named overlay golden@busy is in use by process 1/ });
  t.match(warnings.join('\n'), /refused golden@busy/, 'logged');

  const dev = await named.attach('golden', 'z');
  await dev.write(0, Buffer.alloc(10, 1), W);
  await dev.close();
  const file = join(dir, 'named-golden@z.cow');
  const before = sha256File(file);
  const other = makeBase(dir, base.size, 99, 'other.img');
  const otherBase = await openBase(other.path);
  const wrong = new NamedOverlays({ base: otherBase, blockSize: 4096, dir });
  await t.rejects(wrong.attach('golden', 'z'), {
    code: 'EINVAL',
    message: /belongs to another base image: made for \(size \d+, fingerprint .*\), the base is/,
  });
  t.equal(sha256File(file), before, 'the overlay file is unchanged');
  t.notOk(existsSync(`${file}.lock`), 'and the lock is released again');
  await otherBase.close();

  writeFileSync(join(dir, 'named-golden@bad.cow'), 'garbage');
  await t.rejects(named.attach('golden', 'bad'), { code: 'EINVAL', message: /bad magic/ });
  t.notOk(existsSync(join(dir, 'named-golden@bad.cow.lock')), "a corrupt overlay's lock is released");
  await t.rejects(named.attach('golden', '../x'), RangeError);
  t.equal(named.openCount, 0, 'refused opens leave no entry');
});

t.test('an overlay left dirty by a crash is served, with a warning, and clean after close', async (t) => {
  const { dir, named, warnings } = await setup(t);
  const dev = await named.attach('golden', 'c');
  await dev.write(0, Buffer.alloc(4096, 5), W);
  await dev.flush();
  await dev.write(4096, Buffer.alloc(4096, 6), W); // never flushed
  const file = join(dir, 'named-golden@c.cow');
  const crashed = readFileSync(file); // the file as a kill -9 would leave it
  await dev.close();
  writeFileSync(file, crashed);
  const again = await named.attach('golden', 'c');
  t.match(warnings.join('\n'), /was not closed cleanly/);
  const got = Buffer.alloc(4096);
  await again.read(0, got);
  t.same(got, Buffer.alloc(4096, 5), 'the flushed write is there');
  await again.close();
  t.equal(readFileSync(file).readUInt32BE(20) & 1, 0, 'dirty flag cleared by the clean close');
});

t.test('GOs at the same time share one open: one device, one lock', async (t) => {
  const { dir, named } = await setup(t);
  const first = await named.attach('golden', 'r');
  await first.write(0, Buffer.from('on disk'), W);
  await first.close(); // the file now exists: the next open reads its header and map
  const handles = await Promise.all([1, 2, 3, 4].map(() => named.attach('golden', 'r')));
  t.equal(named.openCount, 1, 'one entry');
  t.same(
    readdirSync(dir)
      .filter((n) => n.includes('@r'))
      .sort(),
    ['named-golden@r.cow', 'named-golden@r.cow.lock'],
    'one lock, no temporary files',
  );
  await handles[0]?.write(4096, Buffer.from('shared'), W);
  for (const [i, h] of handles.entries()) {
    const got = Buffer.alloc(7);
    await h.read(0, got);
    t.equal(got.toString(), 'on disk', `handle ${i} reads the reopened file`);
    const shared = Buffer.alloc(6);
    await h.read(4096, shared);
    t.equal(shared.toString(), 'shared', `handle ${i} sees the unflushed write of handle 0: the same device`);
  }
  await Promise.all(handles.map((h) => h.close()));
  t.equal(named.openCount, 0);
  t.notOk(existsSync(join(dir, 'named-golden@r.cow.lock')), 'lock released by the last close');
});

t.test('GOs at the same time on a held overlay are all refused, and leave nothing behind', async (t) => {
  const { dir, named } = await setup(t);
  const lock = join(dir, 'named-golden@held.cow.lock');
  writeFileSync(lock, '1\n');
  const results = await Promise.allSettled([1, 2, 3].map(() => named.attach('golden', 'held')));
  t.same(
    results.map((r) => r.status),
    ['rejected', 'rejected', 'rejected'],
  );
  for (const r of results) if (r.status === 'rejected') t.match(r.reason, { code: 'EBUSY' });
  t.equal(named.openCount, 0, 'no entry left');
  t.equal(readFileSync(lock, 'utf8'), '1\n', "the holder's lock is untouched");
  t.same(
    readdirSync(dir).filter((n) => n.includes('@held')),
    ['named-golden@held.cow.lock'],
    'no temporary files',
  );
  writeFileSync(lock, `${deadPid()}\n`);
  const dev = await named.attach('golden', 'held');
  t.pass('once the holder is gone, a GO opens it');
  await dev.close();
});

t.test('GOs racing the last close wait for it, then share one reopened device', async (t) => {
  const { dir, named, warnings } = await setup(t);
  const a = await named.attach('golden', 'w');
  await a.write(0, Buffer.alloc(4096, 7), W);
  const events: string[] = [];
  const closing = a.close().then(() => events.push('closed'));
  const [b, c] = await Promise.all([
    named.attach('golden', 'w').then((d) => {
      events.push('b');
      return d;
    }),
    named.attach('golden', 'w').then((d) => {
      events.push('c');
      return d;
    }),
  ]);
  await closing;
  t.equal(events[0], 'closed', 'the close finished before either GO got its device');
  t.notMatch(warnings.join('\n'), /not closed cleanly/, 'reopened after a clean close');
  t.ok(existsSync(join(dir, 'named-golden@w.cow.lock')), 'locked again');
  const got = Buffer.alloc(4096);
  await b.read(0, got);
  t.same(got, Buffer.alloc(4096, 7), 'the data survived the close');
  await b.write(8192, Buffer.from('b'), W);
  const seen = Buffer.alloc(1);
  await c.read(8192, seen);
  t.equal(seen.toString(), 'b', 'b and c share one device');
  await b.close();
  await c.close();
  t.equal(named.openCount, 0);
  t.notOk(existsSync(join(dir, 'named-golden@w.cow.lock')));
});

t.test('opens and closes interleaved: every close and reopen lands, nothing leaks', async (t) => {
  const { dir, named } = await setup(t);
  let held = await named.attach('golden', 'i');
  for (let round = 0; round < 12; round++) {
    await held.write(round * 4096, Buffer.alloc(4096, round + 1), W);
    // The last handle goes; one GO arrives at once, another some turns of the event loop
    // later: during the close, during the reopen, or after it.
    const closing = held.close();
    const early = named.attach('golden', 'i');
    for (let turn = 0; turn < round % 4; turn++) await new Promise((resolve) => setImmediate(resolve));
    const late = named.attach('golden', 'i');
    const [e, l] = await Promise.all([early, late]);
    await closing;
    await e.close();
    held = l;
  }
  for (let round = 0; round < 12; round++) {
    const got = Buffer.alloc(4096);
    await held.read(round * 4096, got);
    t.same(got, Buffer.alloc(4096, round + 1), `round ${round}'s write is there`);
  }
  await held.close();
  t.equal(named.openCount, 0);
  t.same(
    readdirSync(dir).filter((n) => n.includes('@i')),
    ['named-golden@i.cow'],
    'the file, no lock, no temporary files',
  );
});

t.test('closeAll waits for an open in flight and closes what it opened', async (t) => {
  const { dir, named } = await setup(t);
  const opening = named.attach('golden', 'late');
  await named.closeAll();
  t.equal(named.openCount, 0);
  t.notOk(existsSync(join(dir, 'named-golden@late.cow.lock')), 'lock released');
  const dev = await opening;
  await t.rejects(dev.read(0, Buffer.alloc(1)), { code: 'ESHUTDOWN' }, 'its device is closed');
  await dev.close();
  t.equal(named.openCount, 0, 'a close after closeAll is harmless');
});

t.test('two registries in one process on one directory refuse each other', async (t) => {
  const { dir, base, named } = await setup(t);
  const other = new NamedOverlays({ base, blockSize: 4096, dir, warn: () => undefined });
  t.teardown(() => other.closeAll());
  const a = await named.attach('golden', 'shared');
  await t.rejects(other.attach('golden', 'shared'), {
    code: 'EBUSY',
    message: /named overlay golden@shared is in use by this process \(another server in it\)/,
  });
  await a.write(0, Buffer.from('kept'), W);
  await a.close();
  const b = await other.attach('golden', 'shared');
  const got = Buffer.alloc(4);
  await b.read(0, got);
  t.equal(got.toString(), 'kept', 'once released, the other registry opens it with its data');
  await b.close();
});

t.test('space limits: a named overlay reopened from disk counts the data its map holds', async (t) => {
  const dir = t.testdir();
  const { path } = makeBase(dir, 64 * 1024);
  const base = await openBase(path);
  const budget = new SpaceBudget(5 * 4096);
  const named = new NamedOverlays({ base, blockSize: 4096, dir, space: { perOverlay: 3 * 4096, shared: budget } });
  t.teardown(async () => {
    await named.closeAll();
    await base.close();
  });
  const a = await named.attach('golden', 'q');
  await a.write(0, Buffer.alloc(3 * 4096, 1), W);
  await a.trim(4096 * 5, 4096, W); // a zero block: costs nothing
  t.equal(budget.used, 3 * 4096);
  await t.rejects(a.write(4096 * 3, Buffer.alloc(4096, 1), W), { code: 'ENOSPC', message: /it holds 12288 of its 12288/ });
  await a.close();
  t.equal(budget.used, 0, 'a closed named overlay leaves the directory budget');

  const b = await named.attach('golden', 'b');
  await b.write(0, Buffer.alloc(2 * 4096, 2), W);
  const again = await named.attach('golden', 'q');
  t.equal(budget.used, 5 * 4096, 'reopened: its three data blocks count again, beside b');
  await t.rejects(again.write(4096 * 3, Buffer.alloc(4096, 1), W), { code: 'ENOSPC' }, 'still at its own limit');
  await again.write(4096, Buffer.alloc(4096, 3), W);
  t.pass('an overwrite works');
  await t.rejects(b.write(4096 * 2, Buffer.alloc(4096, 2), W), { code: 'ENOSPC', message: /overlay directory holds 20480/ });
  await again.trim(0, 4096, W);
  await b.write(4096 * 2, Buffer.alloc(4096, 2), W);
  t.equal(budget.used, 5 * 4096, "b took the block q's trim gave back");
  await again.close();
  await b.close();
  t.equal(budget.used, 0);
});
