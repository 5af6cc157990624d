// python3-libnbd with 64 requests in flight: random aligned and unaligned pwrite/pread,
// zero, trim and flush, every read checked against an in-memory model that starts as the base
// (test/helpers/aio_model.py); then a new connection sees the pristine base.

import { join } from 'node:path';
import t from 'tap';
import { guardBase, makePatternBase, makeRandomBase } from '../helpers/bases.js';
import { pythonWithNbd, requireClients } from '../helpers/clients.js';
import { waitForEmptyDir } from '../helpers/files.js';
import { describeRun, run } from '../helpers/processes.js';
import { HELPERS, pySession } from '../helpers/py-session.js';
import { startServe } from '../helpers/server-process.js';

interface Counts {
  pwrite: number;
  pread: number;
  zero: number;
  trim: number;
  flush: number;
  max_in_flight: number;
  final_sha256?: string;
  model_sha256?: string;
  errors: string[];
}

if (requireClients(t, [], true)) {
  for (const [name, size, make, blockSize] of [
    ['pattern base, odd size, 4K blocks', 16 * 1024 * 1024 + 1536, makePatternBase, '4096'],
    ['random base, 64K blocks', 16 * 1024 * 1024, makeRandomBase, '64K'],
  ] as const) {
    t.test(`64 in flight against the model (${name})`, async (t) => {
      const dir = t.testdir();
      const overlays = join(dir, 'overlays');
      const base = await make(dir, size);
      const guard = await guardBase(t, base);
      const server = await startServe(t, base, ['--overlay-dir', overlays, '--block-size', blockSize]);

      const python = pythonWithNbd() ?? 'python3';
      const r = await run(python, [join(HELPERS, 'aio_model.py'), server.uri, base, '20240607', '6000', '64'], {
        timeoutMs: 120_000,
      });
      t.equal(r.code, 0, describeRun(r));
      const counts = JSON.parse(r.stdout.trim().split('\n').pop() ?? '{}') as Counts;
      t.same(counts.errors, [], 'no mismatch and no failed command');
      t.equal(counts.max_in_flight, 64, '64 requests were in flight');
      t.ok(
        counts.pwrite > 1000 && counts.pread > 1000 && counts.zero > 100 && counts.trim > 50 && counts.flush > 10,
        'a mix of commands',
      );
      t.equal(counts.final_sha256, counts.model_sha256, 'final contents equal the model');
      t.not(counts.final_sha256, guard.sha256, 'the connection saw its own writes');
      t.same(await waitForEmptyDir(overlays), [], 'overlay deleted after the connection closed');

      // New connection: the base.
      const py = pySession(t);
      await py.ok({ op: 'connect', uri: server.uri });
      t.equal((await py.ok({ op: 'sha256' })).sha256, guard.sha256, 'a new connection reads the pristine base');
      t.equal(await py.end(), 0);

      t.equal((await server.stop()).code, 0);
      await guard.check();
    });
  }
}
