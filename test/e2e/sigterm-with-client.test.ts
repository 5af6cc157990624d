// SIGTERM (and SIGINT) with a writing client connected: the server exits 0 and the overlay
// directory is empty; the client's connection is closed.

import t from 'tap';
import { requireClients } from '../helpers/clients.js';
import { listDir } from '../helpers/files.js';
import { pySession } from '../helpers/py-session.js';
import { servePatternBase } from '../helpers/server-process.js';

if (requireClients(t, [], true)) {
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    t.test(`${signal} with a client connected`, async (t) => {
      const { overlays, guard, server } = await servePatternBase(t, 8 * 1024 * 1024);

      const py = pySession(t);
      await py.ok({ op: 'connect', h: 'w', uri: server.uri });
      await py.ok({ op: 'connect', h: 'r', uri: server.uri });
      await py.ok({ op: 'pwrite', h: 'w', offset: 0, data: Buffer.alloc(65536, 7).toString('base64') });
      t.equal(listDir(overlays).length, 1, 'overlay exists while the writer is connected');

      const status = await server.stop(signal);
      t.same(status, { code: 0, signal: null }, `exit 0 after ${signal}`);
      t.same(listDir(overlays), [], 'overlay directory empty after exit');

      const after = await py.call({ op: 'pread', h: 'w', offset: 0, length: 10 });
      t.notOk(after.ok, 'the client connection is gone');
      await py.end();
      await guard.check();
    });
  }
}
