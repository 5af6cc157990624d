// A real guest on a remote base: the ext4 base image is served by nginx, nbd-cow serves it as
// http://…/base.img through its block cache, and QEMU's NBD client boots against it. The guest's
// checks pass as on a local file; what the server fetched from nginx is set beside what the
// guest read (the summary line the server logs as it stops), and a second server on the same
// cache fetches nothing but its probe.

import { join } from 'node:path';
import t from 'tap';
import { requireNginx, settledAccessLog, startNginx } from '../helpers/nginx.js';
import { bootGuest, checkBoot, checkOverlaysGone, setUpGuest, startServer } from './guest.js';
import { requireGuestTools } from './tools.js';

/** The numbers of the server's closing summary line (remote-base.ts summary()). */
function summaryOf(log: string): { fetchedMiB: number; requests: number; readMiB: number } | undefined {
  const m = /remote base \S+: fetched ([\d.]+) MiB in (\d+) requests for ([\d.]+) MiB read/.exec(log);
  return m === null ? undefined : { fetchedMiB: Number(m[1]), requests: Number(m[2]), readMiB: Number(m[3]) };
}

if (requireGuestTools(t) && requireNginx(t)) {
  t.test('QEMU boots on an http:// base: cold through the cache, then warm from it', async (t) => {
    const { guest, dir, overlays, base } = await setUpGuest(t);
    const nginx = await startNginx(t, { root: dir });
    const cacheDir = join(dir, 'cache');
    const serveArgs = ['--cache-dir', cacheDir];

    const local = await startServer(t, base.path, { overlayDir: overlays });
    const localBoot = await bootGuest(t, guest, 'remote-local', { mode: 'drive', uri: local.uri });
    checkBoot(t, localBoot, { base, pristine: true }, local);
    await local.stop();

    const cold = await startServer(t, nginx.url('base.img'), { overlayDir: overlays, serveArgs });
    const coldBoot = await bootGuest(t, guest, 'remote-cold', { mode: 'drive', uri: cold.uri });
    checkBoot(t, coldBoot, { base, pristine: true }, cold);
    await checkOverlaysGone(t, overlays, coldBoot.name);
    t.equal((await cold.stop()).code, 0, 'the server stops cleanly');
    const coldSummary = summaryOf(cold.log());
    if (coldSummary === undefined) t.fail(`no summary line in the server's log:\n${cold.log()}`);
    else {
      const log = await settledAccessLog(nginx);
      const sent = log.reduce((sum, e) => sum + e.bodyBytesSent, 0);
      t.equal(log.length, coldSummary.requests, 'the server counted every request nginx answered');
      t.ok(coldSummary.readMiB > 0, 'the guest read from the base');
      // Issue 14's goal is 1.1x (1.09x measured); a looser bound here catches a regression
      // without failing on a guest kernel's other read pattern.
      t.ok(sent / 2 ** 20 <= 1.25 * coldSummary.readMiB, 'fetched at most 1.25x what the guest read');
      t.comment(
        `cold boot: ${coldBoot.ms} ms (local file: ${localBoot.ms} ms, ${(coldBoot.ms / localBoot.ms).toFixed(2)}×); ` +
          `fetched ${(sent / 2 ** 20).toFixed(1)} MiB in ${log.length} requests for ${coldSummary.readMiB} MiB read ` +
          `(${(sent / 2 ** 20 / coldSummary.readMiB).toFixed(2)}×)`,
      );
    }

    const before = (await settledAccessLog(nginx)).length;
    const warm = await startServer(t, nginx.url('base.img'), { overlayDir: overlays, serveArgs });
    const warmBoot = await bootGuest(t, guest, 'remote-warm', { mode: 'drive', uri: warm.uri });
    checkBoot(t, warmBoot, { base, pristine: true }, warm);
    await warm.stop();
    const after = await settledAccessLog(nginx);
    t.same(
      after.slice(before).map((e) => e.range),
      ['bytes=0-0'],
      'warm: the probe only, everything the guest read came from the cache',
    );
    t.comment(`warm boot: ${warmBoot.ms} ms`);
  });
}
