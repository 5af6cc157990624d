// TLS with pre-shared keys (--tls-psk), driven by the real clients: nbdinfo over nbds:// with
// libnbd's tls-psk-file, qemu-img and qemu-io with a tls-creds-psk object; a wrong key is refused.
// With --named-overlays-owner tls-identity, alice's key opens golden@alice and not golden@bob.

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { makePatternBase } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { listDir } from '../helpers/files.js';
import { describeRun, run } from '../helpers/processes.js';
import { matchStderr, startServe } from '../helpers/server-process.js';
import { libnbdPskUri as libnbdUri, qemuPskArgs as qemuArgs, tlsFixtures } from '../helpers/tls-fixtures.js';

const SIZE = 8 * 1024 * 1024;

if (requireClients(t, ['nbdinfo', 'qemu-img', 'qemu-io', 'openssl'])) {
  t.test('--tls require with PSK: nbdinfo and qemu over TLS; a wrong key is refused', async (t) => {
    const tls = await tlsFixtures();
    const dir = t.testdir();
    const base = await makePatternBase(dir, SIZE);
    const server = await startServe(t, base, [
      '-v',
      '--overlay-dir',
      join(dir, 'ov'),
      '--tls',
      'require',
      '--tls-psk',
      tls.pskFile,
    ]);
    const info = await run('nbdinfo', ['--size', libnbdUri(server.uri, tls.pskAlice)]);
    t.equal(info.code, 0, describeRun(info));
    t.equal(info.stdout.trim(), String(SIZE));
    const qinfo = await run('qemu-img', ['info', ...qemuArgs(server.uri, tls.pskBob)]);
    t.equal(qinfo.code, 0, describeRun(qinfo));
    const io = await run('qemu-io', [
      ...qemuArgs(server.uri, tls.pskBob),
      '-c',
      'write -P 0x33 0 8192',
      '-c',
      'read -P 0x33 0 8192',
    ]);
    t.equal(io.code, 0, describeRun(io));
    t.notMatch(io.stdout, /Pattern verification failed/);

    const forged = join(dir, 'forged.psk');
    writeFileSync(forged, `alice:${'00'.repeat(32)}\n`, { mode: 0o600 });
    const wrong = await run('nbdinfo', ['--size', libnbdUri(server.uri, { ...tls.pskAlice, file: forged })]);
    t.not(wrong.code, 0, `a wrong key is refused: ${describeRun(wrong)}`);
    const again = await run('nbdinfo', ['--size', libnbdUri(server.uri, tls.pskAlice)]);
    t.equal(again.code, 0, 'and costs only that connection');
    await matchStderr(t, server, /TLS handshake failed/, 'the failed handshake is logged');
    t.equal((await server.stop()).code, 0);
  });

  t.test('--named-overlays-owner tls-identity: alice opens golden@alice only', async (t) => {
    const tls = await tlsFixtures();
    const dir = t.testdir();
    const overlays = join(dir, 'ov');
    const base = await makePatternBase(dir, SIZE, 'golden.img');
    const server = await startServe(t, base, [
      '--overlay-dir',
      overlays,
      '--tls',
      'require',
      '--tls-psk',
      tls.pskFile,
      '--named-overlays-owner',
      'tls-identity',
    ]);
    const own = await run('qemu-io', [...qemuArgs(server.uri, tls.pskAlice, 'golden@alice'), '-c', 'write -P 0x41 0 4096']);
    t.equal(own.code, 0, describeRun(own));
    t.same(
      listDir(overlays).filter((n) => n.endsWith('.cow')),
      ['named-golden@alice.cow'],
      "alice's overlay exists",
    );

    const other = await run('nbdinfo', ['--size', libnbdUri(server.uri, tls.pskAlice, 'golden@bob')]);
    t.not(other.code, 0, 'alice cannot open golden@bob');
    t.match(other.stderr, /policy prevents NBD_OPT_GO/, describeRun(other));
    const qother = await run('qemu-img', ['info', ...qemuArgs(server.uri, tls.pskAlice, 'golden@bob')]);
    t.not(qother.code, 0, 'nor through qemu, which shows the message');
    t.match(
      qother.stderr,
      /belongs to the TLS identity "bob"; this connection has the TLS identity "alice"/,
      describeRun(qother),
    );
    t.same(
      listDir(overlays).filter((n) => n.endsWith('.cow')),
      ['named-golden@alice.cow'],
      'nothing was created for bob',
    );
    t.match(
      server.stderr(),
      /127\.0\.0\.1:\d+\).*refused NBD_OPT_GO: named overlay "golden@bob" belongs to/,
      'logged with the peer',
    );

    const bob = await run('qemu-io', [...qemuArgs(server.uri, tls.pskBob, 'golden@alice'), '-c', 'read -P 0x41 0 4096']);
    t.not(bob.code, 0, "bob cannot read alice's overlay");
    const mine = await run('qemu-io', [...qemuArgs(server.uri, tls.pskAlice, 'golden@alice'), '-c', 'read -P 0x41 0 4096']);
    t.equal(mine.code, 0, `alice reads hers back: ${describeRun(mine)}`);
    t.notMatch(mine.stdout, /Pattern verification failed/);
    t.equal((await server.stop()).code, 0);
  });
}
