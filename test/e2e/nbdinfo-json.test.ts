// nbdinfo --json: size, flags (no multi-conn with per-connection overlays) and meta contexts.

import { join } from 'node:path';
import t from 'tap';
import { makePatternBase } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { describeRun, run } from '../helpers/processes.js';
import { startServe } from '../helpers/server-process.js';

const SIZE = 16 * 1024 * 1024 + 1536;

if (requireClients(t, ['nbdinfo'])) {
  t.test('nbdinfo --json', async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, SIZE, 'golden.img');
    const server = await startServe(t, base, ['--overlay-dir', join(dir, 'overlays')]);
    t.match(server.uri, /\/golden$/, 'export name is the base name without extension');

    const r = await run('nbdinfo', ['--json', server.uri]);
    t.equal(r.code, 0, describeRun(r));
    const info = JSON.parse(r.stdout) as { protocol: string; structured: boolean; exports: Array<Record<string, unknown>> };
    t.equal(info.protocol, 'newstyle-fixed');
    t.equal(info.structured, true);
    t.equal(info.exports.length, 1);
    const exp = info.exports[0] ?? {};
    t.match(exp, {
      'export-name': 'golden',
      'export-size': SIZE,
      is_read_only: false,
      can_multi_conn: false,
      can_trim: true,
      can_zero: true,
      can_flush: true,
      can_fua: true,
      block_size_minimum: 1,
    });
    t.same([...((exp['contexts'] as string[] | undefined) ?? [])].sort(), ['base:allocation', 'qemu:allocation-depth']);

    // nbdinfo --size and --can/--is checks (exit status is the answer).
    const size = await run('nbdinfo', ['--size', server.uri]);
    t.equal(size.stdout.trim(), String(SIZE));
    t.equal((await run('nbdinfo', ['--can', 'trim', server.uri])).code, 0, 'can trim');
    t.equal((await run('nbdinfo', ['--can', 'multi-conn', server.uri])).code, 2, 'cannot multi-conn');
    t.equal((await run('nbdinfo', ['--is', 'read-only', server.uri])).code, 2, 'is not read-only');
  });
}
