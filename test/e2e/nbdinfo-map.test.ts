// nbdinfo --map on a fresh connection: base:allocation reports the base as data (type 0) and
// qemu:allocation-depth reports depth 2 (backing) over the whole odd-sized export.

import { join } from 'node:path';
import t from 'tap';
import { makePatternBase } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { describeRun, run } from '../helpers/processes.js';
import { startServe } from '../helpers/server-process.js';

const SIZE = 16 * 1024 * 1024 + 1536;

if (requireClients(t, ['nbdinfo'])) {
  t.test('nbdinfo --map for both contexts', async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, SIZE);
    const server = await startServe(t, base, ['--overlay-dir', join(dir, 'overlays')]);

    const alloc = await run('nbdinfo', ['--map', '--json', server.uri]);
    t.equal(alloc.code, 0, describeRun(alloc));
    const extents = JSON.parse(alloc.stdout) as Array<{ offset: number; length: number; type: number }>;
    t.match(extents, [{ offset: 0, length: SIZE, type: 0 }]);
    t.equal(extents.length, 1);

    const depth = await run('nbdinfo', ['--map=qemu:allocation-depth', '--json', server.uri]);
    t.equal(depth.code, 0, describeRun(depth));
    const depths = JSON.parse(depth.stdout) as Array<{ offset: number; length: number; type: number }>;
    t.match(depths, [{ offset: 0, length: SIZE, type: 2 }]);

    const totals = await run('nbdinfo', ['--map', '--totals', server.uri]);
    t.equal(totals.code, 0, describeRun(totals));
    t.match(totals.stdout, /^\s*\d+\s+100\.0%?\s+0\s+data/m);
  });
}
