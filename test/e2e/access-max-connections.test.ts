// --max-connections 2: with two clients connected, a third (nbdinfo, and a raw socket) is closed
// before the greeting and the refusal is logged; once one of the two leaves, nbdinfo is served.

import { join } from 'node:path';
import t from 'tap';
import { makePatternBase } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { describeRun, run } from '../helpers/processes.js';
import { RawClient } from '../helpers/raw-nbd/client.js';
import { greet } from '../helpers/raw-nbd/negotiate.js';
import { shortDir } from '../helpers/server-fixture.js';
import { startServe } from '../helpers/server-process.js';
import { waitFor } from '../helpers/wait.js';

const SIZE = 8 * 1024 * 1024;

if (requireClients(t, ['nbdinfo'])) {
  t.test('the third connection is refused until one of two leaves', async (t) => {
    const dir = t.testdir();
    const socket = join(shortDir(t), 'nbd.sock');
    const base = await makePatternBase(dir, SIZE);
    // A unix socket: the cap counts every connection, not only TCP ones.
    const server = await startServe(t, base, ['-k', socket, '--max-connections', '2', '--overlay-dir', join(dir, 'overlays')]);
    const held: RawClient[] = [];
    t.teardown(() => {
      for (const c of held) c.destroy();
    });
    for (let i = 0; i < 2; i++) {
      const client = await RawClient.connect({ kind: 'unix', path: socket });
      held.push(client);
      await greet(client);
    }

    const refused = await run('nbdinfo', ['--size', server.uri]);
    t.not(refused.code, 0, `nbdinfo as the third fails (${describeRun(refused)})`);
    const raw = await RawClient.connect({ kind: 'unix', path: socket });
    held.push(raw);
    t.ok(await raw.closed(), 'a raw third is closed');
    t.equal(raw.buffered, 0, 'before the greeting');
    await waitFor(
      () => /refused a connection from unix: too many connections \(limit 2\)/.test(server.stderr()),
      'the refusal logged',
    );

    held[0]?.destroy();
    let info = await run('nbdinfo', ['--size', server.uri]);
    // The server forgets a connection once its socket and device are closed: retry until then.
    for (let attempt = 0; info.code !== 0 && attempt < 50; attempt++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      info = await run('nbdinfo', ['--size', server.uri]);
    }
    t.equal(info.code, 0, `served after one left (${describeRun(info)})`);
    t.equal(info.stdout.trim(), String(SIZE));
    t.equal((await server.stop()).code, 0, 'clean stop');
  });
}
