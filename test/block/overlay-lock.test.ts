import { existsSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { acquireOverlayLock, lockHolder } from '../../lib/block/overlay-lock.js';
import { deadPid } from '../helpers/processes.js';

t.test('taken, refused while held by a live process, released', async (t) => {
  const path = join(t.testdir(), 'x.cow.lock');
  t.equal(await lockHolder(path), undefined, 'no lock file: no holder');
  const lock = await acquireOverlayLock(path, 'named overlay g@x');
  t.equal(readFileSync(path, 'utf8'), `${process.pid}\n`, 'holds our pid');
  t.same(await lockHolder(path), { pid: process.pid, alive: true }, 'held by this process: a live holder');
  // A second server in this process on the same directory is refused like another process.
  await t.rejects(acquireOverlayLock(path, 'named overlay g@x'), {
    code: 'EBUSY',
    message: `named overlay g@x is in use by this process (another server in it) (lock file ${path})`,
  });
  t.equal(readFileSync(path, 'utf8'), `${process.pid}\n`, 'the held lock stays');
  await lock.release();
  writeFileSync(path, `${process.pid}\n`);
  t.same(await lockHolder(path), { pid: process.pid, alive: false }, 'our pid in a lock we do not hold: stale (recycled pid)');
  rmSync(path);
  await lock.release();
  t.notOk(existsSync(path), 'released (twice is fine)');

  writeFileSync(path, '1\n'); // pid 1 always exists
  await t.rejects(acquireOverlayLock(path, 'named overlay g@x'), {
    code: 'EBUSY',
    message: `named overlay g@x is in use by process 1 (lock file ${path})`,
  });
  t.equal(readFileSync(path, 'utf8'), '1\n', "a live holder's lock is left alone");
});

t.test('stale locks are taken over: dead pid, our own pid (recycled), garbage', async (t) => {
  const dir = t.testdir();
  for (const [what, content] of [
    ['dead pid', `${deadPid()}\n`],
    ['our pid', `${process.pid}\n`],
    ['garbage', 'not a pid'],
    ['empty', ''],
  ] as const) {
    const path = join(dir, `${what}.lock`);
    writeFileSync(path, content);
    const lock = await acquireOverlayLock(path, 'x');
    t.equal(readFileSync(path, 'utf8'), `${process.pid}\n`, `${what}: taken over`);
    await lock.release();
  }
});

t.test('no temporary file is left behind, taken or refused', async (t) => {
  const dir = t.testdir();
  const path = join(dir, 'x.cow.lock');
  const lock = await acquireOverlayLock(path, 'x');
  t.same(readdirSync(dir), ['x.cow.lock'], 'taken');
  await lock.release();
  writeFileSync(path, '1\n');
  await t.rejects(acquireOverlayLock(path, 'x'), { code: 'EBUSY' });
  t.same(readdirSync(dir), ['x.cow.lock'], 'refused');
});
