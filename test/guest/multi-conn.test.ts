// `nbd-client -C 4` in a real guest, on a named overlay (which advertises CAN_MULTI_CONN), also
// with `serve --workers 2` (the connections that land on the other worker move to the one that
// has the overlay open: doc/workers.md), and its refusal by the guest kernel on the plain export
// (a throwaway overlay: no CAN_MULTI_CONN).
//
// Why a relay. QEMU's plain `guestfwd=tcp:ADDR:PORT-tcp:127.0.0.1:N` is a chardev: QEMU
// connects it once, when it starts, and every guest connection to ADDR:PORT is glued onto that
// one host stream. Tried (QEMU 7.2, libslirp 4.7.0) with `-C 4`: the first connection
// negotiates ("Negotiation: ..size = 32MB"), the second prints "Negotiation:" and waits forever
// for a greeting (the server sent its only one on the first), the server logs one connection,
// and the boot hits its timeout. `guestfwd=…-cmd:COMMAND` instead makes libslirp run COMMAND for
// each connection the guest opens (fork_exec: stdin, stdout and stderr are one end of a socket
// pair); COMMAND here is relay.mjs, which pipes it to a new TCP connection to nbd-cow. So each
// of nbd-client's 4 connections reaches the server as its own connection, counted by the
// relay's log and by the server's -v log.
//
// CPUs. /dev/nbd0 gets one blk-mq hardware queue per connection and the kernel maps CPUs to
// queues, so with one guest CPU only the first connection carries I/O (the other three only
// negotiate). The guest gets 2 CPUs, which usually spreads the I/O over two connections. Not
// 4: on a 2-core host under load, 3 of ~10 TCG boots with -smp 4 stalled 30 s on a reply that
// the server had sent (the relay's byte dump shows every request answered within milliseconds)
// but the guest never took in, until the kernel's "Connection timed out, retrying (4/4 alive)"
// resent the request on another connection. 10 of 10 passed with -smp 1 or 2 under the same
// load. NBD_COW_GUEST_MC_CPUS overrides; NBD_COW_GUEST_RELAY_DUMP=1 makes the relay dump the
// bytes (relay.mjs).

import t from 'tap';
import {
  bootGuest,
  checkBoot,
  checkOverlaysGone,
  checkRefusedBoot,
  FLAG_CAN_MULTI_CONN,
  servedCount,
  servedFlags,
  settledRelayLog,
  setUpGuest,
  startServer,
  stopAndCheckBase,
} from './guest.js';
import { requireGuestTools } from './tools.js';

const CPUS = Number(process.env['NBD_COW_GUEST_MC_CPUS'] ?? 2);

if (requireGuestTools(t)) {
  t.test(
    'nbd-client -C 4 -N base@mc through a per-connection guestfwd relay; a later single-connection boot sees the data',
    async (t) => {
      const { guest, dir, overlays, base } = await setUpGuest(t);
      const server = await startServer(t, base.path, { overlayDir: overlays });
      if (server.port === undefined) throw new Error(`no TCP port in ${server.uri}`);
      const relayLog = `${dir}/relay-mc.log`;

      const first = await bootGuest(t, guest, 'multi-conn-C4', {
        mode: 'client',
        port: server.port,
        exportName: 'base@mc',
        connections: 4,
        relayLog,
        cpus: CPUS,
        prior: 'absent',
      });
      checkBoot(t, first, { base, pristine: true }, server);
      t.equal(first.markers.get('nbd-client-connections'), '4', 'the guest ran nbd-client -C 4');
      const conns = await settledRelayLog(relayLog);
      t.comment(
        `relay connections: ${conns.map((c) => `pid ${c.pid}: ${c.toHost} bytes to the server, ${c.toGuest} to the guest, ${c.event} (${c.why ?? ''}) after ${c.ms} ms`).join('; ')}`,
      );
      t.equal(conns.length, 4, 'QEMU ran the relay once per guest connection: 4 connections');
      t.ok(
        conns.every((c) => c.event === 'closed'),
        'every relay has ended (its side of the connection closed)',
      );
      const flags = servedFlags(server.log(), 'base@mc');
      t.equal(flags.length, 4, 'the server served base@mc on 4 connections (its -v log)');
      t.ok(
        flags.every((f) => (f & FLAG_CAN_MULTI_CONN) !== 0),
        `each with CAN_MULTI_CONN (flags ${flags.map((f) => `0x${f.toString(16)}`).join(', ')})`,
      );
      // Which connections carry the I/O is the guest's choice (one blk-mq queue per connection,
      // mapped to CPUs): with 2 guest CPUs it is usually two, but a loaded host's TCG guest has
      // been seen to run every write on one CPU (2026-12-02). Reported, not asserted.
      const busy = conns.filter((c) => c.toHost + c.toGuest > 256 * 1024);
      t.comment(`${busy.length} of ${conns.length} connections carried more than 256 KiB (guest CPUs: ${CPUS})`);
      await checkOverlaysGone(t, overlays, first.name, ['named-base@mc.cow']);

      // One connection, through the ordinary `tcp:` guestfwd.
      const second = await bootGuest(t, guest, 'multi-conn-then-single', {
        mode: 'client',
        port: server.port,
        exportName: 'base@mc',
        prior: 'present',
      });
      checkBoot(t, second, { base, pristine: false, prior: first }, server);
      t.equal(servedCount(server.log(), 'base@mc'), 5, 'the single-connection boot was the fifth connection to base@mc');
      await checkOverlaysGone(t, overlays, second.name, ['named-base@mc.cow']);

      await stopAndCheckBase(t, server, base);
    },
  );

  t.test(
    'nbd-client -C 4 on a named overlay with --workers 2: its connections move to the worker that has it open',
    async (t) => {
      const { guest, dir, overlays, base } = await setUpGuest(t);
      const server = await startServer(t, base.path, { overlayDir: overlays, serveArgs: ['--workers', '2'] });
      if (server.port === undefined) throw new Error(`no TCP port in ${server.uri}`);
      const boot = await bootGuest(t, guest, 'multi-conn-workers', {
        mode: 'client',
        port: server.port,
        exportName: 'base@mc',
        connections: 4,
        relayLog: `${dir}/relay-workers.log`,
        cpus: CPUS,
        prior: 'absent',
      });
      checkBoot(t, boot, { base, pristine: true }, server);
      const flags = servedFlags(server.log(), 'base@mc');
      t.equal(flags.length, 4, 'the server served base@mc on 4 connections');
      t.ok(
        flags.every((f) => (f & FLAG_CAN_MULTI_CONN) !== 0),
        'each with CAN_MULTI_CONN',
      );
      const servedBy = new Set(
        [...server.log().matchAll(/nbd-cow\[worker (\d+)\]: debug: conn \d+ \([^)]*\): serving export "base@mc"/g)].map(
          (m) => m[1],
        ),
      );
      t.equal(servedBy.size, 1, `all 4 served by one worker (${[...servedBy].join(', ')})`);
      t.match(
        server.log(),
        /handed over to worker \d+, which has the named overlay open/,
        'connections that reached the other worker moved',
      );
      await checkOverlaysGone(t, overlays, boot.name, ['named-base@mc.cow']);
      await stopAndCheckBase(t, server, base);
    },
  );

  t.test('nbd-client -C 4 on the plain (throwaway) export is refused by the kernel: no CAN_MULTI_CONN', async (t) => {
    const { guest, dir, overlays, base } = await setUpGuest(t);
    const server = await startServer(t, base.path, { overlayDir: overlays });
    if (server.port === undefined) throw new Error(`no TCP port in ${server.uri}`);
    const relayLog = `${dir}/relay-plain.log`;

    const boot = await bootGuest(t, guest, 'multi-conn-plain-refused', {
      mode: 'client',
      port: server.port,
      exportName: 'base',
      connections: 4,
      relayLog,
      expectRefused: true,
    });
    checkRefusedBoot(t, boot, /does_not_support_multiple_connections/, server);
    const conns = await settledRelayLog(relayLog);
    t.comment(
      `relay connections: ${conns.map((c) => `pid ${c.pid}: ${c.toHost}/${c.toGuest} bytes, ${c.event} (${c.why ?? ''})`).join('; ')}`,
    );
    t.equal(conns.length, 4, 'nbd-client negotiated all 4 connections before the kernel refused the device');
    const flags = servedFlags(server.log(), 'base');
    t.equal(flags.length, 4, 'the server served the plain export on 4 connections');
    t.ok(
      flags.every((f) => (f & FLAG_CAN_MULTI_CONN) === 0),
      `none with CAN_MULTI_CONN (flags ${flags.map((f) => `0x${f.toString(16)}`).join(', ')})`,
    );
    await checkOverlaysGone(t, overlays, boot.name);
    t.ok(server.running(), 'the server is still running');

    await stopAndCheckBase(t, server, base);
  });
}
