// A full overlay disk: writes that do not fit get ENOSPC, the connection lives on, what was
// written before still reads back, another connection is unaffected, and the space comes back
// when the writer disconnects. The overlay directory is a 2 MiB tmpfs (needs root to mount).

import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { fillPattern } from '../../lib/demo-image.js';
import { guardBase, makePatternBase } from '../helpers/bases.js';
import { requireAll } from '../helpers/ci.js';
import { requireClients } from '../helpers/clients.js';
import { waitForEmptyDir } from '../helpers/files.js';
import { pySession } from '../helpers/py-session.js';
import { startServe } from '../helpers/server-process.js';

const MiB = 1024 * 1024;

function mountTmpfs(dir: string, size: string): boolean {
  if (typeof process.getuid !== 'function' || process.getuid() !== 0) return false;
  return spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { stdio: 'ignore' }).status === 0;
}

if (requireClients(t, [], true)) {
  t.test('writes past a full overlay disk get ENOSPC and lose nothing', async (t) => {
    const dir = t.testdir();
    // Outside the test dir: tap removes that before teardowns run, and a mount point there is busy.
    const overlays = mkdtempSync(join(tmpdir(), 'nbd-cow-full-'));
    if (!requireAll(t, mountTmpfs(overlays, '2m') ? [] : ['a tmpfs mount (needs root)'], 'run the tests as root')) {
      rmSync(overlays, { recursive: true, force: true });
      return;
    }
    t.teardown(() => {
      spawnSync('umount', ['-l', overlays], { stdio: 'ignore' });
      rmSync(overlays, { recursive: true, force: true });
    });
    const base = await makePatternBase(dir, 16 * MiB);
    const guard = await guardBase(t, base);
    const server = await startServe(t, base, ['--overlay-dir', overlays]);
    const py = pySession(t);
    await py.ok({ op: 'connect', h: 'a', uri: server.uri });
    await py.ok({ op: 'connect', h: 'b', uri: server.uri });

    const first = Buffer.alloc(64 * 1024, 0x61);
    await py.ok({ op: 'pwrite', h: 'a', offset: 0, data: first.toString('base64') });
    await py.ok({ op: 'flush', h: 'a' });

    // 4 MiB of 256 KiB writes cannot all fit in 2 MiB: some must fail with ENOSPC.
    const chunk = Buffer.alloc(256 * 1024, 0x62);
    const failures: string[] = [];
    for (let i = 0; i < 16; i++) {
      const reply = await py.call({ op: 'pwrite', h: 'a', offset: MiB + i * chunk.length, data: chunk.toString('base64') });
      if (!reply.ok) failures.push(`${String(reply.errno)} ${String(reply.error)}`);
    }
    t.ok(failures.length > 0, 'some writes failed');
    t.ok(
      failures.every((failure) => /ENOSPC/.test(failure)),
      `every failure is ENOSPC (${failures.join('; ')})`,
    );

    t.same(await py.pread('a', 0, first.length), first, 'the write made before the disk filled still reads back');
    const elsewhere = await py.pread('a', 12 * MiB, 4096);
    const expected = Buffer.alloc(4096);
    fillPattern(expected, 12 * MiB);
    t.same(elsewhere.subarray(64), expected.subarray(64), 'untouched ranges still read the base');

    const other = await py.pread('b', 0, first.length);
    t.not(other.toString('hex'), first.toString('hex'), 'the other connection still sees the base');

    await py.ok({ op: 'close', h: 'a' });
    t.same(await waitForEmptyDir(overlays), [], 'the full overlay is deleted at disconnect');
    // With the space back, the other connection can write.
    await py.ok({ op: 'pwrite', h: 'b', offset: 0, data: chunk.toString('base64') });
    await py.ok({ op: 'close', h: 'b' });
    t.equal(await py.end(), 0);
    t.equal((await server.stop()).code, 0);
    await guard.check();
  });
}
