import { spawnSync } from 'node:child_process';
import { readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { ephemeralOverlayName, ephemeralOverlayPid, sweepEphemeralOverlays } from '../../lib/block/ephemeral.js';

/** The pid of a process that has exited (reaped, so kill(pid, 0) gives ESRCH). */
function deadPid(): number {
  const child = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']);
  return Number(child.stdout.toString());
}

t.test('names carry the owning pid', async (t) => {
  t.equal(ephemeralOverlayName(1234, 7), 'eph-1234-7.cow');
  t.equal(ephemeralOverlayPid('eph-1234-7.cow'), 1234);
  t.equal(ephemeralOverlayPid('eph-x-7.cow'), undefined);
  t.equal(ephemeralOverlayPid('keep.cow'), undefined);
  t.equal(ephemeralOverlayPid('eph-1-2.cow.bak'), undefined);
});

t.test('sweep removes only files of dead processes', async (t) => {
  const dir = t.testdir();
  const dead = deadPid();
  const names = [
    ephemeralOverlayName(dead, 1),
    ephemeralOverlayName(dead, 2),
    ephemeralOverlayName(process.pid, 1), // ours
    ephemeralOverlayName(process.ppid, 1), // alive
    'keep.cow',
    `eph-${dead}-1.cow.txt`,
  ];
  for (const n of names) writeFileSync(join(dir, n), 'x');
  t.equal(await sweepEphemeralOverlays(dir), 2);
  t.same(readdirSync(dir).sort(), names.slice(2).sort());
  t.equal(await sweepEphemeralOverlays(dir), 0);
});
