// -k PATH: the server listens on a unix socket; nbdinfo and qemu-img use nbd+unix:///NAME?socket=…
// The socket file is removed when the server stops.

import { existsSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { guardBase, makePatternBase } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { describeRun, run } from '../helpers/processes.js';
import { startServe } from '../helpers/server-process.js';

const SIZE = 16 * 1024 * 1024 + 1536;

if (requireClients(t, ['nbdinfo', 'qemu-img'])) {
  t.test('unix socket', async (t) => {
    const dir = t.testdir();
    const socket = join(dir, 'nbd.sock');
    const base = await makePatternBase(dir, SIZE);
    const guard = await guardBase(t, base);
    const server = await startServe(t, base, ['-k', socket, '--overlay-dir', join(dir, 'overlays')]);
    t.equal(server.uri, `nbd+unix:///base?socket=${encodeURIComponent(socket)}`);
    t.ok(existsSync(socket), 'socket file exists');

    const info = await run('nbdinfo', ['--json', server.uri]);
    t.equal(info.code, 0, describeRun(info));
    t.match(JSON.parse(info.stdout), { exports: [{ 'export-size': SIZE, can_multi_conn: false }] });

    const qinfo = await run('qemu-img', ['info', '--output=json', server.uri]);
    t.equal(qinfo.code, 0, describeRun(qinfo));
    t.equal((JSON.parse(qinfo.stdout) as { 'virtual-size': number })['virtual-size'], SIZE);

    const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', base, server.uri]);
    t.equal(cmp.code, 0, describeRun(cmp));

    // qemu's own syntax for the same socket.
    const json = `json:${JSON.stringify({ driver: 'nbd', server: { type: 'unix', path: socket }, export: 'base' })}`;
    const q2 = await run('qemu-img', ['info', json]);
    t.equal(q2.code, 0, describeRun(q2));
    t.match(q2.stdout, `(${SIZE} bytes)`);

    const stop = await server.stop();
    t.equal(stop.code, 0);
    t.notOk(existsSync(socket), 'socket file removed at stop');
    await guard.check();
  });
}
