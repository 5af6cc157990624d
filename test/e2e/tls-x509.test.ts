// TLS with certificates (--tls-certificates), driven by the real clients: nbdinfo over nbds://
// (libnbd's tls-certificates), qemu-img and qemu-io with a tls-creds-x509 object; with
// --tls-verify-peer a client certificate from another CA is refused. Versions and suites each
// client negotiates: doc/tls.md.

import t from 'tap';
import { makePatternBase } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { describeRun, run } from '../helpers/processes.js';
import { matchStderr, startServe } from '../helpers/server-process.js';
import { type ClientCertificates, tlsFixtures } from '../helpers/tls-fixtures.js';

const SIZE = 8 * 1024 * 1024;

/** libnbd's URI with the client's certificate directory. */
function libnbdUri(uri: string, client: ClientCertificates): string {
  return `${uri}?tls-certificates=${encodeURIComponent(client.dir)}`;
}

/** qemu's --object and --image-opts for a TLS NBD export at `uri` (nbds://127.0.0.1:PORT/NAME). */
function qemuArgs(uri: string, client: ClientCertificates): string[] {
  const { port, pathname } = new URL(uri);
  return [
    '--object',
    `tls-creds-x509,id=tls0,dir=${client.dir},endpoint=client`,
    '--image-opts',
    `driver=nbd,host=127.0.0.1,port=${port},export=${decodeURIComponent(pathname.slice(1))},tls-creds=tls0`,
  ];
}

if (requireClients(t, ['nbdinfo', 'qemu-img', 'qemu-io', 'openssl'])) {
  t.test('--tls require with certificates: nbdinfo, qemu-img and qemu-io over TLS; plain clients refused', async (t) => {
    const tls = await tlsFixtures();
    const dir = t.testdir();
    const base = await makePatternBase(dir, SIZE);
    const server = await startServe(t, base, [
      '--overlay-dir',
      `${dir}/ov`,
      '--tls',
      'require',
      '--tls-certificates',
      tls.serverDir,
    ]);
    t.match(server.uri, /^nbds:\/\/127\.0\.0\.1:\d+\/base$/, 'the URI says TLS');

    const info = await run('nbdinfo', ['--size', libnbdUri(server.uri, tls.alice)]);
    t.equal(info.code, 0, describeRun(info));
    t.equal(info.stdout.trim(), String(SIZE), 'nbdinfo reads the size over TLS');

    const plainUri = server.uri.replace(/^nbds:/, 'nbd:');
    const plain = await run('nbdinfo', ['--size', plainUri]);
    t.not(plain.code, 0, 'a plain client is refused');
    t.match(plain.stderr, /TLS/i, `the refusal names TLS: ${describeRun(plain)}`);
    const list = await run('nbdinfo', ['--list', '--json', plainUri]);
    t.notMatch(list.stdout, /"base"/, 'LIST before TLS names no export');

    const qinfo = await run('qemu-img', ['info', ...qemuArgs(server.uri, tls.bob)]);
    t.equal(qinfo.code, 0, describeRun(qinfo));
    t.match(qinfo.stdout, new RegExp(`virtual size: .*\\(${SIZE} bytes\\)`), 'qemu-img reads the size over TLS');

    const io = await run('qemu-io', [
      ...qemuArgs(server.uri, tls.bob),
      '-c',
      'write -P 0x5a 4096 65536',
      '-c',
      'read -P 0x5a 4096 65536',
    ]);
    t.equal(io.code, 0, describeRun(io));
    t.notMatch(io.stdout, /Pattern verification failed/, 'qemu-io writes and reads back over TLS');
    t.match(io.stdout, /read 65536\/65536 bytes at offset 4096/);
    t.equal((await server.stop()).code, 0);
  });

  t.test('--tls-verify-peer: a certificate from the CA gets in, one from another CA does not', async (t) => {
    const tls = await tlsFixtures();
    const dir = t.testdir();
    const base = await makePatternBase(dir, SIZE);
    const server = await startServe(t, base, [
      '-v',
      '--overlay-dir',
      `${dir}/ov`,
      '--tls',
      'require',
      '--tls-certificates',
      tls.serverDir,
      '--tls-verify-peer',
    ]);
    const alice = await run('nbdinfo', ['--size', libnbdUri(server.uri, tls.alice)]);
    t.equal(alice.code, 0, describeRun(alice));
    const stranger = await run('qemu-img', ['info', ...qemuArgs(server.uri, tls.stranger)]);
    t.not(stranger.code, 0, `another CA's certificate is refused: ${describeRun(stranger)}`);
    const after = await run('nbdinfo', ['--size', libnbdUri(server.uri, tls.bob)]);
    t.equal(after.code, 0, `the server goes on serving: ${describeRun(after)}`);
    await matchStderr(t, server, /TLS .*identity alice/, 'the log names the identity alice proved');
    t.equal((await server.stop()).code, 0);
  });

  t.test('--tls on: TLS at the client’s choice, plain clients still served', async (t) => {
    const tls = await tlsFixtures();
    const dir = t.testdir();
    const base = await makePatternBase(dir, SIZE);
    const server = await startServe(t, base, ['--overlay-dir', `${dir}/ov`, '--tls', 'on', '--tls-certificates', tls.serverDir]);
    t.match(server.uri, /^nbd:\/\//, 'plain URI: TLS is optional');
    const plain = await run('nbdinfo', ['--size', server.uri]);
    t.equal(plain.code, 0, describeRun(plain));
    const secure = await run('nbdinfo', ['--size', libnbdUri(server.uri.replace(/^nbd:/, 'nbds:'), tls.alice)]);
    t.equal(secure.code, 0, describeRun(secure));
    t.equal((await server.stop()).code, 0);
  });
}
