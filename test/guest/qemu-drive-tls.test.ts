// Real guests whose disk is the nbd-cow export over TLS with QEMU's own NBD client
// (-object tls-creds-x509|tls-creds-psk, -blockdev driver=nbd,…,tls-creds=…) against
// `serve --tls require`: the guest mounts the ext4 base, writes, remounts with caches dropped and
// reads back, as qemu-drive.test.ts does in clear text; the base file's sha256 never changes.

import t from 'tap';
import { tlsFixtures } from '../helpers/tls-fixtures.js';
import { bootGuest, checkBoot, checkOverlaysGone, setUpGuest, startServer, stopAndCheckBase, tlsSessions } from './guest.js';
import { requireGuestTools, TLS_GUEST_TOOLS } from './tools.js';

if (requireGuestTools(t, TLS_GUEST_TOOLS)) {
  t.test('tls-creds-x509 with a client certificate, --tls require --tls-verify-peer: write, read back', async (t) => {
    const tls = await tlsFixtures();
    const { guest, overlays, base } = await setUpGuest(t);
    const server = await startServer(t, base.path, {
      overlayDir: overlays,
      serveArgs: ['--tls', 'require', '--tls-certificates', tls.serverDir, '--tls-verify-peer'],
    });
    t.match(server.uri, /^nbds:\/\/127\.0\.0\.1:\d+\/base$/, 'the server prints an nbds:// URI');

    const boot = await bootGuest(t, guest, 'drive-tls-x509', {
      mode: 'drive',
      uri: server.uri,
      tls: { kind: 'x509', dir: tls.bob.dir },
    });
    checkBoot(t, boot, { base, pristine: true }, server);
    t.same(
      tlsSessions(server.log()).map((s) => s.identity),
      ['bob'],
      "one TLS session, whose client proved bob's certificate",
    );
    await checkOverlaysGone(t, overlays, boot.name);
    t.notMatch(server.log(), /: (warn|error): /, 'the server logged no warning or error');

    await stopAndCheckBase(t, server, base);
  });

  t.test('tls-creds-psk, --tls require --tls-psk: write, read back', async (t) => {
    const tls = await tlsFixtures();
    const { guest, overlays, base } = await setUpGuest(t);
    const server = await startServer(t, base.path, {
      overlayDir: overlays,
      serveArgs: ['--tls', 'require', '--tls-psk', tls.pskFile],
    });

    const psk = { kind: 'psk', dir: tls.pskAlice.dir, username: tls.pskAlice.username } as const;
    const boot = await bootGuest(t, guest, 'drive-tls-psk', { mode: 'drive', uri: server.uri, tls: psk });
    checkBoot(t, boot, { base, pristine: true }, server);
    t.same(
      tlsSessions(server.log()).map((s) => s.identity),
      ['alice'],
      "one TLS session, whose client proved alice's key",
    );
    await checkOverlaysGone(t, overlays, boot.name);

    await stopAndCheckBase(t, server, base);
  });
}
