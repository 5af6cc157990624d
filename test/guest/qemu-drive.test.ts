// Real guests through QEMU's own NBD client (-drive file=nbd://… and nbd+unix://…): the guest
// mounts the ext4 base, checks the known files, writes, remounts with caches dropped and reads
// back. A second boot against the same server sees the pristine base, and the base file's
// sha256 never changes.

import t from 'tap';
import { bootGuest, checkBoot, checkOverlaysGone, setUpGuest, socketDir, startServer, stopAndCheckBase } from './guest.js';
import { requireGuestTools } from './tools.js';

if (requireGuestTools(t)) {
  t.test(
    'QEMU -drive file=nbd://127.0.0.1:PORT/EXPORT: write, read back; a second boot (empty export name) sees the pristine base',
    async (t) => {
      const { guest, overlays, base } = await setUpGuest(t);
      const server = await startServer(t, base.path, { overlayDir: overlays });
      t.match(server.uri, /^nbd:\/\/127\.0\.0\.1:\d+\/base$/, 'default export name is the base name');

      const first = await bootGuest(t, guest, 'drive-tcp-1', { mode: 'drive', uri: server.uri });
      checkBoot(t, first, { base, pristine: true }, server);
      await checkOverlaysGone(t, overlays, first.name);
      t.ok(server.running(), 'the server is still running after the first guest');

      // The empty export name reaches the same export; a new connection gets a fresh overlay.
      const emptyName = server.uri.replace(/\/base$/, '/');
      const second = await bootGuest(t, guest, 'drive-tcp-2-empty-name', { mode: 'drive', uri: emptyName });
      checkBoot(t, second, { base, pristine: true }, server);
      await checkOverlaysGone(t, overlays, second.name);
      t.not(second.markers.get('written-sha256'), first.markers.get('written-sha256'), 'each boot wrote its own data');

      await stopAndCheckBase(t, server, base);
    },
  );

  t.test('QEMU -drive file=nbd+unix:///EXPORT?socket=PATH with -x NAME', async (t) => {
    const { guest, overlays, base } = await setUpGuest(t, 'disk.raw');
    const sock = `${await socketDir(t)}/nbd.sock`;
    const server = await startServer(t, base.path, { overlayDir: overlays, socket: sock, exportName: 'guestdisk' });
    const printed = new URL(server.uri);
    t.equal(printed.protocol, 'nbd+unix:', 'the server prints an nbd+unix URI');
    t.equal(printed.pathname, '/guestdisk', 'with the export name');
    t.equal(printed.searchParams.get('socket'), sock, 'and the socket path');

    const boot = await bootGuest(t, guest, 'drive-unix', { mode: 'drive', uri: server.uri });
    checkBoot(t, boot, { base, pristine: true }, server);
    await checkOverlaysGone(t, overlays, boot.name);

    await stopAndCheckBase(t, server, base);
  });
}
