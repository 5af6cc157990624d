// nbdcopy file → export: nbdcopy (one connection, as the export has no multi-conn) writes the
// file, zeroes included, and exits 0; its overlay dies with its connection, so the next
// connection sees the base. The same data written over one python3-libnbd connection (data
// chunks and write-zeroes for all-zero chunks, as nbdcopy does) reads back as the file.

import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { sha256, sha256File } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { listDir, waitForEmptyDir } from '../helpers/files.js';
import { describeRun, run } from '../helpers/processes.js';
import { pySession } from '../helpers/py-session.js';
import { servePatternBase } from '../helpers/server-process.js';

const MiB = 1024 * 1024;
const SIZE = 16 * MiB + 1536;

if (requireClients(t, ['nbdcopy'], true)) {
  t.test('nbdcopy a file into the export', async (t) => {
    const { dir, overlays, guard, server } = await servePatternBase(t, SIZE);

    const src = randomBytes(SIZE);
    src.fill(0, 3 * MiB, 7 * MiB); // a zero band: nbdcopy sends zero requests for it
    src.fill(0, SIZE - 1000); // zeros up to the odd end
    const srcPath = join(dir, 'src.raw');
    writeFileSync(srcPath, src);

    for (const extra of [[], ['--flush'], ['--synchronous'], ['--requests=64', '--request-size=4096']]) {
      const r = await run('nbdcopy', [...extra, srcPath, server.uri]);
      t.equal(r.code, 0, `nbdcopy ${extra.join(' ')}: ${describeRun(r)}`);
    }
    t.same(await waitForEmptyDir(overlays), [], 'nbdcopy’s overlays are gone with its connections');

    // The next connection sees the base, not the copied file.
    const back = join(dir, 'back.raw');
    const r = await run('nbdcopy', [server.uri, back]);
    t.equal(r.code, 0, describeRun(r));
    t.equal(await sha256File(back), guard.sha256, 'a new connection reads the pristine base');

    // Same writes in one libnbd connection, then read back in that connection.
    const py = pySession(t);
    await py.ok({ op: 'connect', uri: server.uri });
    const wrote = await py.ok({ op: 'pwrite_file', path: srcPath, chunk: 256 * 1024 });
    t.ok((wrote.zeroed as number) >= 4 * MiB, 'zero chunks went as write-zeroes');
    await py.ok({ op: 'flush' });
    t.equal((await py.ok({ op: 'sha256' })).sha256, sha256(src), 'the connection reads back the file');
    t.equal(listDir(overlays).length, 1, 'one overlay while the writer is connected');
    await py.ok({ op: 'close' });
    await py.ok({ op: 'connect', h: 'b', uri: server.uri });
    t.equal((await py.ok({ op: 'sha256', h: 'b' })).sha256, guard.sha256, 'the next connection reads the base');
    t.equal(await py.end(), 0);

    t.equal((await server.stop()).code, 0);
    await guard.check();
  });
}
