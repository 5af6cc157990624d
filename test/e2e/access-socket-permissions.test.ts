// --socket-mode and --socket-group: the unix socket file has the mode and group asked for by the
// time the URI is printed, and nbdinfo is served through it. Without root the group is one of the
// server's own (any other is refused: only root may give a file away).

import { statSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { makePatternBase } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { describeRun, run } from '../helpers/processes.js';
import { shortDir } from '../helpers/server-fixture.js';
import { startServe } from '../helpers/server-process.js';

const SIZE = 8 * 1024 * 1024;
const isRoot = process.getuid?.() === 0;

if (requireClients(t, ['nbdinfo'])) {
  t.test('--socket-mode 0660 --socket-group GROUP', async (t) => {
    const dir = t.testdir();
    const socket = join(shortDir(t), 'nbd.sock');
    const base = await makePatternBase(dir, SIZE);
    const group = isRoot ? 'nogroup' : String(process.getgid?.() ?? 0);
    const gid = isRoot ? 65534 : (process.getgid?.() ?? 0);
    const server = await startServe(t, base, [
      '-k',
      socket,
      '--socket-mode',
      '0660',
      '--socket-group',
      group,
      '--overlay-dir',
      join(dir, 'overlays'),
    ]);
    const stats = statSync(socket);
    t.ok(stats.isSocket());
    t.equal((stats.mode & 0o777).toString(8), '660', 'mode');
    t.equal(stats.gid, gid, 'group');
    const info = await run('nbdinfo', ['--size', server.uri]);
    t.equal(info.code, 0, describeRun(info));
    t.equal(info.stdout.trim(), String(SIZE));
  });

  t.test('--socket-mode 600 (no leading zero): owner only', async (t) => {
    const dir = t.testdir();
    const socket = join(shortDir(t), 'nbd.sock');
    const base = await makePatternBase(dir, SIZE);
    await startServe(t, base, ['-k', socket, '--socket-mode', '600', '--overlay-dir', join(dir, 'overlays')]);
    t.equal((statSync(socket).mode & 0o777).toString(8), '600');
  });
}
