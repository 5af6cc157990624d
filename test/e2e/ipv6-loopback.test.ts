// -b ::1: the server listens on the IPv6 loopback and prints nbd://[::1]:PORT/NAME.
// Skipped (failed under CI) when this machine cannot bind ::1.

import { createServer } from 'node:net';
import { join } from 'node:path';
import t from 'tap';
import { makePatternBase } from '../helpers/bases.js';
import { requireAll } from '../helpers/ci.js';
import { missing } from '../helpers/clients.js';
import { describeRun, run } from '../helpers/processes.js';
import { startServe } from '../helpers/server-process.js';

async function canBindIpv6Loopback(): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createServer();
    s.once('error', () => resolve(false));
    s.listen({ host: '::1', port: 0 }, () => s.close(() => resolve(true)));
  });
}

const absent = missing('nbdinfo', 'qemu-img');
if (!(await canBindIpv6Loopback())) absent.push('the IPv6 loopback (::1)');
if (requireAll(t, absent, 'make deps-test installs the clients; ::1 needs IPv6 enabled on lo')) {
  t.test('serve on ::1', async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, 8 * 1024 * 1024);
    const server = await startServe(t, base, ['-b', '::1', '-p', '0', '--overlay-dir', join(dir, 'overlays')]);
    t.match(server.uri, /^nbd:\/\/\[::1\]:\d+\/base$/);

    const info = await run('nbdinfo', ['--size', server.uri]);
    t.equal(info.code, 0, describeRun(info));
    t.equal(info.stdout.trim(), String(8 * 1024 * 1024));

    const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', base, server.uri]);
    t.equal(cmp.code, 0, describeRun(cmp));
    t.equal((await server.stop()).code, 0);
  });
}
