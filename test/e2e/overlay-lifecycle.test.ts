// Overlay files through the CLI: none while only readers are connected, one appears at a
// connection's first write (named eph-<server pid>-<n>.cow), and it is deleted when that
// connection disconnects.

import t from 'tap';
import { requireClients } from '../helpers/clients.js';
import { listDir, waitForEmptyDir } from '../helpers/files.js';
import { pySession } from '../helpers/py-session.js';
import { servePatternBase } from '../helpers/server-process.js';

if (requireClients(t, [], true)) {
  t.test('overlay created at the first write, deleted at disconnect', async (t) => {
    const { overlays, guard, server } = await servePatternBase(t, 8 * 1024 * 1024);
    t.same(listDir(overlays), [], 'no overlay before any connection');

    const py = pySession(t);
    await py.ok({ op: 'connect', h: 'r1', uri: server.uri });
    await py.ok({ op: 'connect', h: 'r2', uri: server.uri });
    await py.ok({ op: 'sha256', h: 'r1' });
    await py.ok({ op: 'pread', h: 'r2', offset: 12345, length: 100 });
    await py.ok({ op: 'flush', h: 'r2' }); // flush and cache are not writes
    await py.ok({ op: 'cache', h: 'r2', offset: 0, length: 65536 });
    t.same(listDir(overlays), [], 'readers create no overlay');

    await py.ok({ op: 'connect', h: 'w', uri: server.uri });
    await py.ok({ op: 'pwrite', h: 'w', offset: 4096, data: Buffer.from('hello').toString('base64') });
    const names = listDir(overlays);
    t.equal(names.length, 1, 'one overlay after the first write (created before the reply)');
    t.match(names[0], new RegExp(`^eph-${server.pid}-\\d+\\.cow$`), 'named after the server pid');
    await py.ok({ op: 'zero', h: 'w', offset: 0, length: 65536 });
    t.same(listDir(overlays), names, 'further writes reuse it');

    await py.ok({ op: 'close', h: 'w' });
    t.same(await waitForEmptyDir(overlays), [], 'deleted after the writer disconnects');

    // A trim-only or zero-only connection makes an overlay too, and loses it at disconnect.
    await py.ok({ op: 'connect', h: 'z', uri: server.uri });
    await py.ok({ op: 'trim', h: 'z', offset: 0, length: 4096 });
    t.equal(listDir(overlays).length, 1, 'trim creates an overlay');
    await py.ok({ op: 'close', h: 'z' });
    t.same(await waitForEmptyDir(overlays), [], 'deleted after disconnect');

    // The readers are still fine.
    t.ok((await py.call({ op: 'pread', h: 'r1', offset: 0, length: 10 })).ok);
    t.equal(await py.end(), 0);
    t.equal((await waitForEmptyDir(overlays)).length, 0);

    t.equal((await server.stop()).code, 0);
    await guard.check();
  });
}
