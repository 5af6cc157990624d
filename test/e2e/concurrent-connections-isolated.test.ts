// Two connections open at the same time are isolated: A's writes, zeroes and trims (flushed
// or not) never show in B, and B's own writes never show in A. Each has its own overlay.

import t from 'tap';
import { sha256 } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { waitForDir, waitForEmptyDir } from '../helpers/files.js';
import { pySession } from '../helpers/py-session.js';
import { servePatternBase } from '../helpers/server-process.js';

const MiB = 1024 * 1024;
const SIZE = 16 * MiB + 1536;

if (requireClients(t, [], true)) {
  t.test('A writes, B reads the base', async (t) => {
    const { overlays, guard, server } = await servePatternBase(t, SIZE);
    const py = pySession(t);
    await py.ok({ op: 'connect', h: 'a', uri: server.uri });
    await py.ok({ op: 'connect', h: 'b', uri: server.uri });
    const read = py.pread;

    const before = await read('b', MiB - 100, 8192);
    const ones = Buffer.alloc(8192, 0x11);
    await py.ok({ op: 'pwrite', h: 'a', offset: MiB - 100, data: ones.toString('base64') });
    await py.ok({ op: 'zero', h: 'a', offset: 4 * MiB, length: MiB });
    await py.ok({ op: 'trim', h: 'a', offset: 6 * MiB + 1, length: 70000 });
    t.same(await read('a', MiB - 100, 8192), ones, 'A reads its write');
    t.same(await read('b', MiB - 100, 8192), before, 'B still reads the base');

    await py.ok({ op: 'flush', h: 'a' });
    await py.ok({ op: 'pwrite', h: 'a', offset: SIZE - 10, data: Buffer.alloc(10, 0x22).toString('base64'), fua: true });
    t.same(await read('b', MiB - 100, 8192), before, 'B still reads the base after A flushed');
    const names = await waitForDir(overlays, (n) => n.length === 1);
    t.equal(names.length, 1, 'only A has an overlay');

    const baseSha = guard.sha256;
    t.equal((await py.ok({ op: 'sha256', h: 'b' })).sha256, baseSha, 'B reads the whole base');
    t.not((await py.ok({ op: 'sha256', h: 'a' })).sha256, baseSha, 'A reads its own image');

    // B writes elsewhere; A does not see it either.
    const aBefore = await read('a', 10 * MiB, 4096);
    await py.ok({ op: 'pwrite', h: 'b', offset: 10 * MiB, data: Buffer.alloc(4096, 0x33).toString('base64') });
    await py.ok({ op: 'flush', h: 'b' });
    t.same(await read('a', 10 * MiB, 4096), aBefore, 'A does not see B’s write');
    t.same(await read('b', 10 * MiB, 4096), Buffer.alloc(4096, 0x33), 'B reads its write');
    t.equal((await waitForDir(overlays, (n) => n.length === 2)).length, 2, 'two overlays, one per writer');
    t.not(sha256(await read('a', MiB - 100, 8192)), sha256(await read('b', MiB - 100, 8192)));

    await py.ok({ op: 'close', h: 'a' });
    t.equal((await waitForDir(overlays, (n) => n.length === 1)).length, 1, 'A’s overlay deleted, B’s kept');
    t.same(await read('b', 10 * MiB, 4096), Buffer.alloc(4096, 0x33), 'B keeps its data after A left');
    await py.ok({ op: 'close', h: 'b' });
    t.same(await waitForEmptyDir(overlays), []);
    t.equal(await py.end(), 0);

    t.equal((await server.stop()).code, 0);
    await guard.check();
  });
}
