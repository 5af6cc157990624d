// qemu-img compare: the export is identical to the base file, byte for byte (odd size too),
// and a file differing in one byte is reported as different at that offset.

import { closeSync, copyFileSync, openSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { guardBase, makePatternBase, makeRandomBase } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { describeRun, run } from '../helpers/processes.js';
import { startServe } from '../helpers/server-process.js';

if (requireClients(t, ['qemu-img'])) {
  t.test('pattern base of odd size compares identical', async (t) => {
    const dir = t.testdir();
    const size = 16 * 1024 * 1024 + 1536;
    const base = await makePatternBase(dir, size);
    const guard = await guardBase(t, base);
    const server = await startServe(t, base, ['--overlay-dir', join(dir, 'overlays')]);

    const r = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', base, server.uri]);
    t.equal(r.code, 0, describeRun(r));
    t.match(r.stdout, /Images are identical/);

    // Strict mode (-s) also says identical.
    const strict = await run('qemu-img', ['compare', '-s', '-f', 'raw', '-F', 'raw', base, server.uri]);
    t.equal(strict.code, 0, describeRun(strict));

    // One byte off, near the partial last block: compare exits 1 and names the offset.
    const changed = join(dir, 'changed.img');
    copyFileSync(base, changed);
    const fd = openSync(changed, 'r+');
    const byte = Buffer.alloc(1);
    readSync(fd, byte, 0, 1, size - 10);
    byte[0] = (byte[0] ?? 0) ^ 0xff;
    writeSync(fd, byte, 0, 1, size - 10);
    closeSync(fd);
    const diff = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', changed, server.uri]);
    t.equal(diff.code, 1, describeRun(diff));
    t.match(diff.stdout, /Content mismatch at offset/);
    t.equal((await server.stop()).code, 0);
    await guard.check();
  });

  t.test('random base compares identical', async (t) => {
    const dir = t.testdir();
    const base = await makeRandomBase(dir, 8 * 1024 * 1024);
    const guard = await guardBase(t, base);
    const server = await startServe(t, base, ['--overlay-dir', join(dir, 'overlays')]);
    const r = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', base, server.uri]);
    t.equal(r.code, 0, describeRun(r));
    t.equal((await server.stop()).code, 0);
    await guard.check();
  });
}
