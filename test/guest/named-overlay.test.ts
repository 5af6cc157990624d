// Named overlays with real guests through QEMU's own NBD client: a guest on
// nbd://127.0.0.1:PORT/base@NAME writes a file, and the next boot on the same name finds it
// (nbdcow.prior=present: the guest checks, and the host compares its sha256 and note with what
// the first boot wrote), with the same server or after a server restart. A boot on the plain
// export `base` (a throwaway overlay) still sees the pristine base, the named overlay file is
// the only one left in the overlay directory, it checks clean after the server stops, and the
// base file's sha256 never changes. Then `overlay info` and `map` describe what the guests left,
// and, frozen, that overlay serves as a layer: a guest on a throwaway overlay over it
// (serve --layer) finds the second boot's file, and the layer file does not change.

import t from 'tap';
import { describeRun } from '../helpers/processes.js';
import { runCli } from '../helpers/server-process.js';
import {
  bootGuest,
  checkBoot,
  checkOverlayClean,
  checkOverlaysGone,
  FLAG_CAN_MULTI_CONN,
  servedFlags,
  setUpGuest,
  sha256File,
  startServer,
  stopAndCheckBase,
} from './guest.js';
import { requireGuestTools } from './tools.js';

if (requireGuestTools(t)) {
  t.test("QEMU -drive nbd://…/base@vm1: the second boot sees the first boot's file; plain base stays pristine", async (t) => {
    const { guest, overlays, base } = await setUpGuest(t);
    const server = await startServer(t, base.path, { overlayDir: overlays });
    const named = `${server.uri}@vm1`;
    const kept = ['named-base@vm1.cow'];

    const first = await bootGuest(t, guest, 'named-vm1-1', { mode: 'drive', uri: named, prior: 'absent' });
    checkBoot(t, first, { base, pristine: true }, server);
    const flags = servedFlags(server.log(), 'base@vm1');
    t.equal(flags.length, 1, 'QEMU made one connection to base@vm1');
    t.ok(
      flags.every((f) => (f & FLAG_CAN_MULTI_CONN) !== 0),
      `base@vm1 advertises CAN_MULTI_CONN (flags 0x${flags[0]?.toString(16) ?? '?'})`,
    );
    await checkOverlaysGone(t, overlays, first.name, kept);

    const second = await bootGuest(t, guest, 'named-vm1-2', { mode: 'drive', uri: named, prior: 'present' });
    checkBoot(t, second, { base, pristine: false, prior: first }, server);
    await checkOverlaysGone(t, overlays, second.name, kept);

    // The plain export: a throwaway overlay over the untouched base.
    const plainBoot = await bootGuest(t, guest, 'named-then-plain', { mode: 'drive', uri: server.uri, prior: 'absent' });
    checkBoot(t, plainBoot, { base, pristine: true }, server);
    await checkOverlaysGone(t, overlays, plainBoot.name, kept);
    t.notMatch(server.log(), /: (warn|error): /, 'the server logged no warning or error');

    await stopAndCheckBase(t, server, base);
    const file = `${overlays}/named-base@vm1.cow`;
    await checkOverlayClean(t, file, base);

    // What the two boots left, as `overlay info` and `overlay map` show it.
    const info = await runCli(['overlay', 'info', file]);
    t.equal(info.code, 0, describeRun(info));
    t.match(info.stdout, /^data: +[1-9]\d* blocks/m, 'the guests wrote data blocks');
    t.match(info.stdout, /^state: +clean \(closed cleanly\)$/m);
    t.comment(`overlay info after two guest boots:\n${info.stdout}`);
    const map = await runCli(['overlay', 'map', file]);
    t.equal(map.code, 0, describeRun(map));
    t.match(map.stdout, /^\S+\s+\S+\s+data\s+0x/m, 'map lists data extents with their offset in the file');
    t.comment(
      `overlay map after two guest boots (${map.stdout.split('\n').length - 2} extents), first lines:\n${map.stdout.split('\n').slice(0, 12).join('\n')}`,
    );

    // Kept as a layer: a guest booted on a throwaway overlay over it finds the second boot's file.
    const frozen = await runCli(['overlay', 'freeze', file]);
    t.equal(frozen.code, 0, describeRun(frozen));
    const layerSha = await sha256File(file);
    const layered = await startServer(t, base.path, { overlayDir: overlays, serveArgs: ['--layer', file] });
    const third = await bootGuest(t, guest, 'layered-on-vm1', { mode: 'drive', uri: layered.uri, prior: 'present' });
    checkBoot(t, third, { base, pristine: false, prior: second }, layered);
    await stopAndCheckBase(t, layered, base);
    t.equal(await sha256File(file), layerSha, 'the layer file never changed');
  });

  t.test(
    "QEMU -drive nbd://…/base@vmr across a server restart: the second boot (new server) sees the first boot's file",
    async (t) => {
      const { guest, overlays, base } = await setUpGuest(t);
      const kept = ['named-base@vmr.cow'];

      const server1 = await startServer(t, base.path, { overlayDir: overlays });
      const first = await bootGuest(t, guest, 'named-vmr-1', { mode: 'drive', uri: `${server1.uri}@vmr`, prior: 'absent' });
      checkBoot(t, first, { base, pristine: true }, server1);
      await checkOverlaysGone(t, overlays, first.name, kept);
      const stopped1 = await server1.stop();
      t.equal(stopped1.code, 0, 'the first server stops cleanly on SIGTERM');
      t.equal(await sha256File(base.path), base.sha256, 'the base image is unchanged after the first server (sha256)');

      // A new process (and a new port) on the same overlay directory.
      const server2 = await startServer(t, base.path, { overlayDir: overlays });
      t.not(server2.pid, server1.pid, 'a new server process');
      const second = await bootGuest(t, guest, 'named-vmr-2-restarted', {
        mode: 'drive',
        uri: `${server2.uri}@vmr`,
        prior: 'present',
      });
      checkBoot(t, second, { base, pristine: false, prior: first }, server2);
      await checkOverlaysGone(t, overlays, second.name, kept);
      t.notMatch(server2.log(), /not closed cleanly/, 'the restarted server found the overlay closed cleanly');
      t.notMatch(server1.log() + server2.log(), /: (warn|error): /, 'neither server logged a warning or error');

      const stopped2 = await server2.stop();
      t.equal(stopped2.code, 0, 'the second server stops cleanly on SIGTERM');
      await checkOverlayClean(t, `${overlays}/named-base@vmr.cow`, base);
      t.equal(await sha256File(base.path), base.sha256, 'the base image is unchanged (sha256)');
    },
  );
}
