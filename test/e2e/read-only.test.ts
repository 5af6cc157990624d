// -r: the base is served read-only with no overlay: nbdinfo shows is_read_only and
// can_multi_conn, writes via qemu-io fail, reads match the base, and no overlay dir is made.

import { existsSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { guardBase, makePatternBase } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { describeRun, run } from '../helpers/processes.js';
import { startServe } from '../helpers/server-process.js';

const SIZE = 16 * 1024 * 1024 + 1536;

if (requireClients(t, ['nbdinfo', 'qemu-io', 'qemu-img'])) {
  t.test('read-only export', async (t) => {
    const dir = t.testdir();
    const overlays = join(dir, 'overlays');
    const base = await makePatternBase(dir, SIZE);
    const guard = await guardBase(t, base);
    const server = await startServe(t, base, ['-r', '--overlay-dir', overlays]);

    const info = await run('nbdinfo', ['--json', server.uri]);
    t.equal(info.code, 0, describeRun(info));
    const exp = (JSON.parse(info.stdout) as { exports: Array<Record<string, unknown>> }).exports[0];
    t.match(exp, { is_read_only: true, can_multi_conn: true, 'export-size': SIZE });

    const write = await run('qemu-io', ['-f', 'raw', server.uri, '-c', 'write -P 0xab 0 4k']);
    t.not(write.code, 0, 'qemu-io write fails');
    t.match(write.stdout + write.stderr, /read-only|Permission denied|Operation not permitted|failed/i, describeRun(write));

    // qemu-io without -r opens read-write; the server's read-only flag makes qemu refuse or
    // the write fail. Also try a zero and a discard through an explicit read-write open.
    const zero = await run('qemu-io', ['-f', 'raw', server.uri, '-c', 'write -z 0 4k']);
    t.not(zero.code, 0, 'write -z fails');

    const read = await run('qemu-io', ['-r', '-f', 'raw', server.uri, '-c', 'read 0 64k']);
    t.equal(read.code, 0, describeRun(read));

    const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', base, server.uri]);
    t.equal(cmp.code, 0, `reads match the base: ${describeRun(cmp)}`);
    t.notOk(existsSync(overlays), 'no overlay directory in read-only mode');

    t.equal((await server.stop()).code, 0);
    await guard.check();
  });
}
