// nbdinfo --list: NBD_OPT_LIST shows the one export with its description; -x and -D apply.

import { join } from 'node:path';
import t from 'tap';
import { makePatternBase } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { describeRun, run } from '../helpers/processes.js';
import { startServe } from '../helpers/server-process.js';

if (requireClients(t, ['nbdinfo'])) {
  t.test('nbdinfo --list --json', async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, 8 * 1024 * 1024);
    const server = await startServe(t, base, ['-x', 'disk0', '-D', 'test disk', '--overlay-dir', join(dir, 'overlays')]);
    t.match(server.uri, /\/disk0$/);

    const r = await run('nbdinfo', ['--list', '--json', server.uri]);
    t.equal(r.code, 0, describeRun(r));
    const info = JSON.parse(r.stdout) as { exports: Array<Record<string, unknown>> };
    t.equal(info.exports.length, 1, 'one export');
    t.match(info.exports[0], { 'export-name': 'disk0', description: 'test disk', 'export-size': 8 * 1024 * 1024 });

    const text = await run('nbdinfo', ['--list', server.uri]);
    t.equal(text.code, 0, describeRun(text));
    t.match(text.stdout, /export="disk0":/);
    t.match(text.stdout, /description: test disk/);

    // The empty name reaches the default export; an unknown name is refused.
    const empty = await run('nbdinfo', ['--size', server.uri.replace(/\/disk0$/, '/')]);
    t.equal(empty.stdout.trim(), String(8 * 1024 * 1024), 'empty export name works');
    const unknown = await run('nbdinfo', ['--size', server.uri.replace(/\/disk0$/, '/nope')]);
    t.not(unknown.code, 0, 'unknown export name fails');
  });
}
