// --allow over IPv4: a client outside every range is closed before the greeting (nbdinfo fails,
// a raw socket gets no byte) and the refusal is logged with its address; a client inside is
// served. 127.0.0.0/8 is all loopback on Linux, so a client can connect from 127.0.0.2.

import { connect } from 'node:net';
import { join } from 'node:path';
import t from 'tap';
import { makePatternBase } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { describeRun, run } from '../helpers/processes.js';
import { startServe } from '../helpers/server-process.js';
import { waitFor } from '../helpers/wait.js';

const SIZE = 8 * 1024 * 1024;
const NBDMAGIC = Buffer.from('NBDMAGIC');

/** The port in nbd://HOST:PORT/NAME. */
function portOf(uri: string): number {
  const match = /:(\d+)\/[^/]*$/.exec(uri);
  if (match === null) throw new Error(`no port in ${uri}`);
  return Number(match[1]);
}

/** Connect to 127.0.0.1:`port` from `localAddress`; the bytes received until close or the 18-byte greeting. */
function firstBytes(port: number, localAddress: string): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port, localAddress });
    let received = Buffer.alloc(0);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error('neither a greeting nor a close within 10 s'));
    }, 10_000);
    const done = (): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(received);
    };
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (received.length >= 18) done();
    });
    socket.on('close', done);
    socket.on('error', () => undefined);
  });
}

if (requireClients(t, ['nbdinfo'])) {
  t.test('--allow 127.0.0.2: 127.0.0.1 is refused before the greeting, 127.0.0.2 is served', async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, SIZE);
    const server = await startServe(t, base, ['--allow', '127.0.0.2', '--overlay-dir', join(dir, 'overlays')]);

    const info = await run('nbdinfo', ['--size', server.uri]);
    t.not(info.code, 0, `nbdinfo from 127.0.0.1 fails (${describeRun(info)})`);
    await waitFor(
      () => /refused a connection from 127\.0\.0\.1:\d+: address not in the allow list/.test(server.stderr()),
      'the refusal logged',
    );

    t.equal((await firstBytes(portOf(server.uri), '127.0.0.1')).length, 0, 'a raw client from 127.0.0.1 gets no byte');
    const greeting = await firstBytes(portOf(server.uri), '127.0.0.2');
    t.strictSame(greeting.subarray(0, 8), NBDMAGIC, 'a raw client from 127.0.0.2 gets the greeting');
    t.equal((await server.stop()).code, 0, 'clean stop');
  });

  t.test('--allow 127.0.0.0/8 with a second range: nbdinfo on 127.0.0.1 works', async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, SIZE);
    const server = await startServe(t, base, [
      '--allow',
      'fd00::/8',
      '--allow',
      '127.0.0.0/8',
      '--overlay-dir',
      join(dir, 'overlays'),
    ]);
    const info = await run('nbdinfo', ['--size', server.uri]);
    t.equal(info.code, 0, describeRun(info));
    t.equal(info.stdout.trim(), String(SIZE));
    t.notMatch(server.stderr(), /refused/, 'nothing refused');
  });
}
