// At start the server removes ephemeral overlays left by a server that is gone
// (eph-<dead pid>-<n>.cow) and keeps everything else: files of a live process and other names.

import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { makePatternBase } from '../helpers/bases.js';
import { listDir } from '../helpers/files.js';
import { deadPid } from '../helpers/processes.js';
import { startServe } from '../helpers/server-process.js';

t.test('leftover overlays of a dead pid are removed at start', async (t) => {
  const dir = t.testdir();
  const overlays = join(dir, 'overlays');
  mkdirSync(overlays);
  const dead = deadPid();
  const leftovers = [`eph-${dead}-1.cow`, `eph-${dead}-27.cow`];
  const kept = [`eph-${process.pid}-1.cow`, 'keep.cow', `eph-${dead}-1.cow.bak`, 'notes.txt'].sort();
  for (const name of [...leftovers, ...kept]) writeFileSync(join(overlays, name), 'x'.repeat(4096));
  const base = await makePatternBase(dir, 8 * 1024 * 1024);

  const server = await startServe(t, base, ['--overlay-dir', overlays]);
  t.same(listDir(overlays), kept, 'dead-pid overlays removed before the URI was printed; others kept');
  t.equal((await server.stop()).code, 0);
  t.same(listDir(overlays), kept, 'stopping leaves other files alone');
});

t.test('the overlay directory is created when missing', async (t) => {
  const dir = t.testdir();
  const overlays = join(dir, 'a', 'b', 'overlays');
  const base = await makePatternBase(dir, 8 * 1024 * 1024);
  const server = await startServe(t, base, ['--overlay-dir', overlays]);
  t.same(listDir(overlays), [], 'exists and is empty');
  t.equal((await server.stop()).code, 0);
});
