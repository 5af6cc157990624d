// Multi-connection clients on a named overlay: nbdcopy sees CAN_MULTI_CONN and copies a file
// into golden@m over several connections; after it finishes (it flushes), a fresh connection
// and a restarted server read exactly that file back. libnbd: four connections write disjoint
// ranges concurrently, one FLUSH on another connection, all read everything back.

import { join } from 'node:path';
import t from 'tap';
import { makeRandomBase, sha256, sha256File } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { describeRun, run } from '../helpers/processes.js';
import { pySession } from '../helpers/py-session.js';
import { startServe } from '../helpers/server-process.js';

const SIZE = 32 * 1024 * 1024;

if (requireClients(t, ['nbdcopy'], true)) {
  t.test('nbdcopy into golden@m uses several connections; the data is kept', async (t) => {
    const dir = t.testdir();
    const overlays = join(dir, 'overlays');
    const base = await makeRandomBase(dir, SIZE, 'golden.img');
    const source = await makeRandomBase(dir, SIZE, 'source.img');
    let server = await startServe(t, base, ['--overlay-dir', overlays, '-v']);
    const copy = await run('nbdcopy', ['--connections=4', source, `${server.uri}@m`]);
    t.equal(copy.code, 0, `nbdcopy into the named overlay: ${describeRun(copy)}`);
    const connections = server.stderr().match(/serving export "golden@m"/g)?.length ?? 0;
    t.ok(connections >= 2, `nbdcopy opened ${connections} connections to golden@m`);
    t.equal((await server.stop()).code, 0);

    server = await startServe(t, base, ['--overlay-dir', overlays]);
    const out = join(dir, 'out.img');
    const back = await run('nbdcopy', [`${server.uri}@m`, out]);
    t.equal(back.code, 0, `nbdcopy out of it after a restart: ${describeRun(back)}`);
    t.equal(await sha256File(out), await sha256File(source), 'reads back exactly the copied file');
    t.equal((await server.stop()).code, 0);
  });

  t.test('libnbd: four writers, one flush, everyone reads everything', async (t) => {
    const dir = t.testdir();
    const base = await makeRandomBase(dir, 4 * 1024 * 1024, 'golden.img');
    const server = await startServe(t, base, ['--overlay-dir', join(dir, 'overlays')]);
    const py = pySession(t);
    const chunk = 256 * 1024;
    const names = ['a', 'b', 'c', 'd'];
    for (const h of [...names, 'f']) await py.ok({ op: 'connect', h, uri: `${server.uri}@mc` });
    const datas = names.map((_, i) => Buffer.alloc(chunk, 0x10 + i));
    await Promise.all(names.map((h, i) => py.ok({ op: 'pwrite', h, offset: i * chunk, data: datas[i]?.toString('base64') })));
    await py.ok({ op: 'flush', h: 'f' });
    const want = sha256(Buffer.concat(datas));
    for (const h of [...names, 'f']) {
      const got = await py.ok({ op: 'sha256', h, offset: 0, length: 4 * chunk });
      t.equal(got.sha256, want, `${h} reads all four writes`);
    }
    t.equal(await py.end(), 0);
  });
}
