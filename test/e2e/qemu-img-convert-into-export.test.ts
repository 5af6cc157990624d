// qemu-img convert *into* the export: every write (data and zeroes) succeeds, the overlay
// holds it for that connection only, so afterwards the export compares equal to the base and
// different from the source, and the base file never changed.

import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { requireClients } from '../helpers/clients.js';
import { waitForEmptyDir } from '../helpers/files.js';
import { describeRun, run } from '../helpers/processes.js';
import { servePatternBase } from '../helpers/server-process.js';

const MiB = 1024 * 1024;
const SIZE = 16 * MiB + 1536;

if (requireClients(t, ['qemu-img'])) {
  t.test('qemu-img convert -n from a file into the export', async (t) => {
    const { dir, overlays, base, guard, server } = await servePatternBase(t, SIZE);

    // Source: random data with a 4 MiB zero band (qemu-img sends write-zeroes for it).
    const src = randomBytes(SIZE);
    src.fill(0, 6 * MiB, 10 * MiB);
    const srcPath = join(dir, 'src.raw');
    writeFileSync(srcPath, src);

    for (const extra of [[], ['-W', '-m', '4'], ['-S', '0', '-t', 'none']]) {
      const r = await run('qemu-img', ['convert', '-n', '-f', 'raw', '-O', 'raw', ...extra, srcPath, server.uri]);
      t.equal(r.code, 0, `convert ${extra.join(' ')}: ${describeRun(r)}`);
    }
    t.same(await waitForEmptyDir(overlays), [], 'each convert connection’s overlay is gone once it disconnected');

    // Each compare is a new connection: pristine base, not the source.
    const same = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', base, server.uri]);
    t.equal(same.code, 0, `export equals the base afterwards: ${describeRun(same)}`);
    const differs = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', srcPath, server.uri]);
    t.equal(differs.code, 1, `export differs from the source: ${describeRun(differs)}`);

    t.equal((await server.stop()).code, 0);
    await guard.check();
  });
}
