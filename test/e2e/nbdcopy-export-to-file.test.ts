// nbdcopy copies the export to a file that matches the base byte for byte.

import { statSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { guardBase, makePatternBase, makeRandomBase, sha256File } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { describeRun, run } from '../helpers/processes.js';
import { startServe } from '../helpers/server-process.js';

if (requireClients(t, ['nbdcopy'])) {
  for (const [name, size, make] of [
    ['pattern, odd size', 16 * 1024 * 1024 + 1536, makePatternBase],
    ['random, 24 MiB', 24 * 1024 * 1024, makeRandomBase],
  ] as const) {
    t.test(`nbdcopy export → file (${name})`, async (t) => {
      const dir = t.testdir();
      const base = await make(dir, size);
      const guard = await guardBase(t, base);
      const server = await startServe(t, base, ['--overlay-dir', join(dir, 'overlays')]);

      const out = join(dir, 'copy.raw');
      const r = await run('nbdcopy', [server.uri, out]);
      t.equal(r.code, 0, describeRun(r));
      t.equal(statSync(out).size, size);
      t.equal(await sha256File(out), guard.sha256, 'copy equals the base');

      // Single-connection, synchronous mode too.
      const out2 = join(dir, 'copy2.raw');
      const r2 = await run('nbdcopy', ['--synchronous', '--request-size=65536', server.uri, out2]);
      t.equal(r2.code, 0, describeRun(r2));
      t.equal(await sha256File(out2), guard.sha256, 'synchronous copy equals the base');

      t.equal((await server.stop()).code, 0);
      await guard.check();
    });
  }
}
