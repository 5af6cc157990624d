// `serve --config lab.yaml`: two bases, three exports, served at once on TCP and on a unix
// socket. nbdinfo --list shows the three with their descriptions on both listeners; libnbd
// clients each see their own export's base and policy (a read-only export, a named-only one),
// and a write through one export shows through no other. The bases are never written.

import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { guardBase, makePatternBase, makeStripedBase, stripeByte } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { run } from '../helpers/processes.js';
import { pySession } from '../helpers/py-session.js';
import { shortDir } from '../helpers/server-fixture.js';
import { startServeConfig } from '../helpers/server-process.js';

const MiB = 1024 * 1024;

interface ListedExport {
  readonly 'export-name': string;
  readonly description: string;
  readonly 'export-size': number;
  readonly is_read_only: boolean;
}

async function listExports(uri: string): Promise<ListedExport[]> {
  const r = await run('nbdinfo', ['--list', '--json', uri]);
  if (r.code !== 0) throw new Error(`nbdinfo --list ${uri}: ${r.stderr}`);
  return (JSON.parse(r.stdout) as { exports: ListedExport[] }).exports;
}

if (requireClients(t, ['nbdinfo'], true)) {
  t.test('three exports of two bases on a TCP and a unix listener', async (t) => {
    const dir = t.testdir();
    const debian = await makePatternBase(dir, 4 * MiB, 'debian.img');
    const windows = await makeStripedBase(dir, 8 * MiB, 'windows.img');
    const guards = [await guardBase(t, debian), await guardBase(t, windows)];
    const socket = join(shortDir(t), 'nbd.sock');
    const config = join(dir, 'lab.yaml');
    writeFileSync(
      config,
      [
        '# two images, three exports',
        'listen:',
        '  - tcp: 127.0.0.1:0',
        `  - unix: ${socket}`,
        'exports:',
        '  debian:',
        '    base: debian.img',
        '    description: Debian golden image',
        '    overlay-dir: overlays',
        '  debian-kept:',
        '    base: debian.img',
        '    description: Debian, named overlays only',
        '    overlays: named',
        '    overlay-dir: overlays',
        '  windows:',
        '    base: windows.img',
        '    description: Windows installer disk',
        '    read-only: true',
        '',
      ].join('\n'),
    );
    const server = await startServeConfig(t, config);
    t.match(server.uri, /^nbd:\/\/127\.0\.0\.1:\d+\/debian$/, 'the first export on the first listener');
    const tcp = server.uri.replace(/\/debian$/, '/');
    const unix = `nbd+unix:///?socket=${socket}`;

    for (const uri of [tcp, unix]) {
      const listed = await listExports(uri);
      t.strictSame(
        listed.map((e) => [e['export-name'], e.description, e['export-size'], e.is_read_only]),
        [
          ['debian', 'Debian golden image', 4 * MiB, false],
          ['debian-kept', 'Debian, named overlays only', 4 * MiB, false],
          ['windows', 'Windows installer disk', 8 * MiB, true],
        ],
        `nbdinfo --list ${uri.startsWith('nbd+unix') ? 'on the unix socket' : 'on TCP'}`,
      );
    }

    const py = pySession(t);
    await py.ok({ op: 'connect', h: 'd', uri: `${tcp}debian` });
    await py.ok({ op: 'connect', h: 'w', uri: `nbd+unix:///windows?socket=${socket}` });
    await py.ok({ op: 'connect', h: 'k', uri: `nbd+unix:///debian-kept@alice?socket=${socket}` });
    const debianBytes = readFileSync(debian);
    t.same(await py.pread('d', MiB, 4096), debianBytes.subarray(MiB, MiB + 4096), 'debian reads its base');
    t.same(await py.pread('w', 3 * MiB, 4096), Buffer.alloc(4096, stripeByte(3 * MiB)), 'windows reads its base');

    await py.ok({ op: 'pwrite', h: 'd', offset: 0, data: Buffer.alloc(4096, 0xd1).toString('base64') });
    await py.ok({ op: 'pwrite', h: 'k', offset: 0, data: Buffer.alloc(4096, 0xa1).toString('base64') });
    t.same(await py.pread('d', 0, 4096), Buffer.alloc(4096, 0xd1), "debian's write in its throwaway overlay");
    t.same(await py.pread('k', 0, 4096), Buffer.alloc(4096, 0xa1), "debian-kept@alice's write in its named overlay");
    const refused = await py.call({ op: 'pwrite', h: 'w', offset: 0, data: Buffer.alloc(512, 1).toString('base64') });
    t.notOk(refused.ok, `a write to the read-only export fails: ${refused.error ?? ''}`);

    const plain = await py.call({ op: 'connect', h: 'x', uri: `${tcp}debian-kept` });
    t.notOk(plain.ok, 'debian-kept refuses a throwaway overlay (named only)');
    t.match(plain.error ?? '', /not permitted|policy/i, `refused by policy: ${plain.error ?? ''}`);
    const unknown = await py.call({ op: 'connect', h: 'y', uri: `${tcp}ubuntu` });
    t.notOk(unknown.ok, 'an export not in the file is unknown');
    await py.ok({ op: 'connect', h: 'd2', uri: `${tcp}debian` });
    t.same(await py.pread('d2', 0, 4096), debianBytes.subarray(0, 4096), "a second debian client does not see the first's write");

    await py.end();
    t.equal((await server.stop()).code, 0, 'the server stops cleanly');
    for (const guard of guards) await guard.check();
  });
}
