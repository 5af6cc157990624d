// Real guests through the Linux kernel's NBD client: nbd-client in the guest connects to
// 10.0.2.100:10809, which QEMU user networking (restrict=on, guestfwd) forwards to nbd-cow on
// the host's loopback; no packet leaves the machine. QEMU opens the forwarded connection when it
// starts, so the server listens first, and each boot makes exactly one connection.
// With a named overlay (-N base@vm2) the second boot finds what the first one wrote.

import t from 'tap';
import {
  bootGuest,
  checkBoot,
  checkOverlayClean,
  checkOverlaysGone,
  servedCount,
  setUpGuest,
  startServer,
  stopAndCheckBase,
} from './guest.js';
import { requireGuestTools } from './tools.js';

if (requireGuestTools(t)) {
  t.test('nbd-client in the guest over guestfwd: write, read back, and isolation', async (t) => {
    const { guest, overlays, base } = await setUpGuest(t);
    const server = await startServer(t, base.path, { overlayDir: overlays });
    if (server.port === undefined) throw new Error(`no TCP port in ${server.uri}`);
    const target = { mode: 'client', port: server.port, exportName: 'base' } as const;

    const first = await bootGuest(t, guest, 'nbd-client-1', target);
    checkBoot(t, first, { base, pristine: true }, server);
    await checkOverlaysGone(t, overlays, first.name);
    t.ok(server.running(), 'the server is still running after the first guest');

    const second = await bootGuest(t, guest, 'nbd-client-2', target);
    checkBoot(t, second, { base, pristine: true }, server);
    await checkOverlaysGone(t, overlays, second.name);
    t.not(second.markers.get('written-sha256'), first.markers.get('written-sha256'), 'each boot wrote its own data');

    await stopAndCheckBase(t, server, base);
  });

  t.test("nbd-client -N base@vm2 (a named overlay): the second boot sees the first boot's file", async (t) => {
    const { guest, overlays, base } = await setUpGuest(t);
    const server = await startServer(t, base.path, { overlayDir: overlays });
    if (server.port === undefined) throw new Error(`no TCP port in ${server.uri}`);
    const kept = ['named-base@vm2.cow'];

    const first = await bootGuest(t, guest, 'nbd-client-vm2-1', {
      mode: 'client',
      port: server.port,
      exportName: 'base@vm2',
      prior: 'absent',
    });
    checkBoot(t, first, { base, pristine: true }, server);
    await checkOverlaysGone(t, overlays, first.name, kept);

    const second = await bootGuest(t, guest, 'nbd-client-vm2-2', {
      mode: 'client',
      port: server.port,
      exportName: 'base@vm2',
      prior: 'present',
    });
    checkBoot(t, second, { base, pristine: false, prior: first }, server);
    await checkOverlaysGone(t, overlays, second.name, kept);
    t.equal(servedCount(server.log(), 'base@vm2'), 2, 'one connection to base@vm2 per boot');
    t.notMatch(server.log(), /: (warn|error): /, 'the server logged no warning or error');

    await stopAndCheckBase(t, server, base);
    await checkOverlayClean(t, `${overlays}/named-base@vm2.cow`, base);
  });
}
