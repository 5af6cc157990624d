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

/** "bytes=FIRST-LAST" as numbers; undefined for anything else. */
function byteRange(range: string): { first: number; last: number } | undefined {
  const m = /^bytes=(\d+)-(\d+)$/.exec(range);
  return m === null ? undefined : { first: Number(m[1]), last: Number(m[2]) };
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

    const coldRanges = (await settledAccessLog(nginx)).map((e) => e.range);
    const warm = await startServer(t, nginx.url('base.img'), { overlayDir: overlays, serveArgs });
    const warmBoot = await bootGuest(t, guest, 'remote-warm', { mode: 'drive', uri: warm.uri });
    checkBoot(t, warmBoot, { base, pristine: true }, warm);
    await warm.stop();
    const warmRanges = (await settledAccessLog(nginx)).slice(coldRanges.length).map((e) => e.range);
    t.equal(warmRanges[0], 'bytes=0-0', 'warm: the probe first');
    // The guest's requests are not the same from boot to boot (its block layer merges them by
    // timing), so a warm boot's read-ahead may reach a little past what the cold boot fetched.
    // What it must never do is fetch again anything the cold boot fetched: that is in the cache.
    const coldFetched = coldRanges.filter((r) => r !== 'bytes=0-0').map(byteRange);
    const again = warmRanges.slice(1).map(byteRange);
    const refetched = again.filter(
      (r) => r === undefined || coldFetched.some((c) => c === undefined || (r.first <= c.last && c.first <= r.last)),
    );
    t.same(refetched, [], 'warm: nothing the cold boot fetched is fetched again');
    const newBytes = again.reduce((sum, r) => sum + (r === undefined ? 0 : r.last - r.first + 1), 0);
    t.ok(newBytes <= 1 << 20, `warm: at most 1 MiB of read-ahead past the cold boot's (${newBytes} bytes)`);
    t.comment(`warm boot: ${warmBoot.ms} ms; fetched ${warmRanges.length - 1} ranges besides the probe (${newBytes} bytes)`);
  });
}
