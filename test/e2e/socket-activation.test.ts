// `nbd-cow serve` started by systemd-socket-activate, as nbd-cow.socket starts it
// (doc/systemd/): it serves the TCP and unix sockets it is handed (LISTEN_FDS) instead of -b/-p/-k,
// nbdinfo reaches the export through both, the printed URIs name them, and the unix socket file
// (systemd's) stays after SIGTERM. With NOTIFY_SOCKET set it reports READY=1.

import { existsSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { guardBase, makePatternBase } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { startNotifyReceiver } from '../helpers/notify-receiver.js';
import { describeRun, run } from '../helpers/processes.js';
import { shortDir } from '../helpers/server-fixture.js';
import { CLI } from '../helpers/server-process.js';
import { SOCKET_ACTIVATE, socketActivate } from '../helpers/socket-activate.js';
import { waitFor } from '../helpers/wait.js';

const SIZE = 4 * 1024 * 1024 + 512;
/** A client waits in the backlog until the server runs; a server that never serves fails in this. */
const CLIENT_TIMEOUT_MS = 30_000;

if (requireClients(t, ['nbdinfo', SOCKET_ACTIVATE, 'systemd-notify', 'python3'])) {
  // Fails until bin/nbd-cow.ts serves the inherited sockets (inheritedListenAddresses() from
  // lib/server/socket-activation.ts, issue 11): before that the CLI ignores LISTEN_FDS, listens
  // on 127.0.0.1:10809, and nbdinfo waits in systemd's backlog until CLIENT_TIMEOUT_MS.
  for (const workers of [[], ['--workers', '2']]) {
    t.test(
      `serve on the TCP and unix sockets systemd passes${workers.length > 0 ? ' (two workers share them)' : ''}`,
      async (t) => {
        const dir = shortDir(t);
        const socket = join(dir, 'nbd.sock');
        const base = await makePatternBase(dir, SIZE);
        const guard = await guardBase(t, base);
        const server = await socketActivate(t, {
          tcp: true,
          unixPaths: [socket],
          command: CLI,
          args: ['serve', base, '--overlay-dir', join(dir, 'overlays'), ...workers],
        });

        // The first connection starts the server; it waits in the backlog meanwhile.
        const tcp = await run('nbdinfo', ['--json', `nbd://127.0.0.1:${server.port}`], { timeoutMs: CLIENT_TIMEOUT_MS });
        t.equal(tcp.code, 0, `nbdinfo over TCP: ${describeRun(tcp)}; server: ${server.stderr()}`);
        if (tcp.code === 0) t.match(JSON.parse(tcp.stdout), { exports: [{ 'export-size': SIZE }] });
        const unix = await run('nbdinfo', ['--json', `nbd+unix:///?socket=${socket}`], { timeoutMs: CLIENT_TIMEOUT_MS });
        t.equal(unix.code, 0, `nbdinfo over the unix socket: ${describeRun(unix)}`);
        if (unix.code === 0) t.match(JSON.parse(unix.stdout), { exports: [{ 'export-size': SIZE }] });

        // The URIs printed name the sockets' real addresses.
        t.match(server.stdout(), `nbd://127.0.0.1:${server.port}/base`);
        t.match(server.stdout(), `nbd+unix:///base?socket=${encodeURIComponent(socket)}`);

        t.strictSame(await server.stop(), { code: 0, signal: null }, `exits 0 at SIGTERM; stderr: ${server.stderr()}`);
        t.ok(existsSync(socket), "the unix socket file is systemd's: not removed");
        await guard.check();
      },
    );
  }

  // Fails until bin/nbd-cow.ts calls notifyReady() (lib/server/readiness.ts) once it serves.
  t.test('READY=1 to NOTIFY_SOCKET once serving (Type=notify)', async (t) => {
    const dir = shortDir(t);
    const base = await makePatternBase(dir, SIZE);
    const notify = await startNotifyReceiver(t);
    const server = await socketActivate(t, {
      tcp: true,
      command: CLI,
      args: ['serve', base, '--overlay-dir', join(dir, 'overlays')],
      setenv: { NOTIFY_SOCKET: notify.path },
    });
    const info = await run('nbdinfo', ['--size', `nbd://127.0.0.1:${server.port}`], { timeoutMs: CLIENT_TIMEOUT_MS });
    t.equal(info.stdout.trim(), String(SIZE), describeRun(info));
    await waitFor(() => notify.messages.some((m) => m.data.split('\n').includes('READY=1')), 'READY=1', 30_000);
    const ready = notify.messages.find((m) => m.data.split('\n').includes('READY=1'));
    t.match(ready?.data, new RegExp(`^MAINPID=${server.pid}$`, 'm'), "MAINPID is the server's pid");
    t.strictSame(await server.stop(), { code: 0, signal: null });
  });
}
