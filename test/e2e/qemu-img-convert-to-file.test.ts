// qemu-img convert -O raw copies the export to a file whose bytes equal the base's.

import { statSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { guardBase, makePatternBase, makeRandomBase, sha256File } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { describeRun, run } from '../helpers/processes.js';
import { startServe } from '../helpers/server-process.js';

if (requireClients(t, ['qemu-img'])) {
  for (const [name, size, make] of [
    ['pattern, odd size', 16 * 1024 * 1024 + 1536, makePatternBase],
    ['random, 32 MiB', 32 * 1024 * 1024, makeRandomBase],
  ] as const) {
    t.test(`convert the export to a raw file (${name})`, async (t) => {
      const dir = t.testdir();
      const base = await make(dir, size);
      const guard = await guardBase(t, base);
      const server = await startServe(t, base, ['--overlay-dir', join(dir, 'overlays')]);

      const out = join(dir, 'copy.raw');
      const r = await run('qemu-img', ['convert', '-p', '-f', 'raw', '-O', 'raw', server.uri, out]);
      t.equal(r.code, 0, describeRun(r));
      t.equal(statSync(out).size, size, 'copy has the base size');
      t.equal(await sha256File(out), guard.sha256, 'copy has the base bytes');
      t.equal((await server.stop()).code, 0);
      await guard.check();
    });
  }
}
