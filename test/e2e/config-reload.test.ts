// SIGHUP reloads `serve --config FILE`: an export added appears, one removed refuses new
// connections while a python3-libnbd connection on it keeps reading and writing its overlay,
// and a changed description shows at once. A file that does not parse, or names a base that
// does not exist, leaves the running configuration in place and the log says why.

import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { guardBase, makePatternBase, makeStripedBase } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { run } from '../helpers/processes.js';
import { pySession } from '../helpers/py-session.js';
import { startServeConfig } from '../helpers/server-process.js';
import { waitFor } from '../helpers/wait.js';

const MiB = 1024 * 1024;

function labConfig(exports: Record<string, { base: string; description: string }>): string {
  const lines = ['listen:', '  - tcp: 127.0.0.1:0', 'exports:'];
  for (const [name, e] of Object.entries(exports)) {
    lines.push(`  ${name}:`, `    base: ${e.base}`, `    description: ${e.description}`, '    overlay-dir: overlays');
  }
  return `${lines.join('\n')}\n`;
}

async function listed(uri: string): Promise<Array<[string, string]>> {
  const r = await run('nbdinfo', ['--list', '--json', uri]);
  if (r.code !== 0) throw new Error(`nbdinfo --list: ${r.stderr}`);
  const { exports } = JSON.parse(r.stdout) as { exports: Array<{ 'export-name': string; description: string }> };
  return exports.map((e) => [e['export-name'], e.description]);
}

if (requireClients(t, ['nbdinfo'], true)) {
  t.test('SIGHUP adds and removes exports while a connection goes on', async (t) => {
    const dir = t.testdir();
    const alphaBase = await makePatternBase(dir, 4 * MiB, 'alpha.img');
    const betaBase = await makeStripedBase(dir, 4 * MiB, 'beta.img');
    const guards = [await guardBase(t, alphaBase), await guardBase(t, betaBase)];
    const config = join(dir, 'lab.yaml');
    writeFileSync(
      config,
      labConfig({ alpha: { base: 'alpha.img', description: 'Alpha' }, beta: { base: 'beta.img', description: 'Beta' } }),
    );
    const server = await startServeConfig(t, config);
    const root = server.uri.replace(/\/alpha$/, '/');
    t.strictSame(await listed(root), [
      ['alpha', 'Alpha'],
      ['beta', 'Beta'],
    ]);

    const py = pySession(t);
    await py.ok({ op: 'connect', h: 'a', uri: `${root}alpha` });
    await py.ok({ op: 'pwrite', h: 'a', offset: 0, data: Buffer.alloc(8192, 0xa1).toString('base64') });

    // alpha removed, beta described anew, gamma added (on alpha's base).
    writeFileSync(
      config,
      labConfig({ beta: { base: 'beta.img', description: 'Beta, updated' }, gamma: { base: 'alpha.img', description: 'Gamma' } }),
    );
    process.kill(server.pid, 'SIGHUP');
    await waitFor(() => server.stderr().includes('reloaded'), 'the reload to be logged', 10_000);
    t.match(server.stderr(), /reloaded .*lab\.yaml: added gamma; removed alpha; changed beta/);
    t.strictSame(
      await listed(root),
      [
        ['beta', 'Beta, updated'],
        ['gamma', 'Gamma'],
      ],
      'the new exports are listed',
    );
    const refused = await py.call({ op: 'connect', h: 'x', uri: `${root}alpha` });
    t.notOk(refused.ok, `a new connection to the removed export is refused: ${refused.error ?? ''}`);

    // The connection made before the reload keeps its export and its overlay.
    await py.ok({ op: 'pwrite', h: 'a', offset: 65536, data: Buffer.alloc(4096, 0xa2).toString('base64') });
    t.same(await py.pread('a', 0, 8192), Buffer.alloc(8192, 0xa1), 'its first write is still there');
    t.same(await py.pread('a', 65536, 4096), Buffer.alloc(4096, 0xa2), 'and it writes after the reload');
    await py.ok({ op: 'flush', h: 'a' });
    await py.ok({ op: 'connect', h: 'g', uri: `${root}gamma` });
    t.same(await py.pread('g', 0, 4096), readFileSync(alphaBase).subarray(0, 4096), "gamma serves alpha's base, not its overlay");

    // A file that does not parse: the running configuration stays.
    writeFileSync(config, 'listen:\n  - tcp: 127.0.0.1:0\nexports:\n  beta: [unclosed\n');
    process.kill(server.pid, 'SIGHUP');
    await waitFor(() => server.stderr().includes('reload failed'), 'the failed reload to be logged', 10_000);
    t.match(server.stderr(), /reload failed, the running configuration stays: .*lab\.yaml:\d+:\d+: /);
    // A file that parses but names a missing base: nothing changes either.
    writeFileSync(config, labConfig({ delta: { base: 'missing.img', description: 'Delta' } }));
    process.kill(server.pid, 'SIGHUP');
    await waitFor(() => server.stderr().split('reload failed').length === 3, 'the second failed reload', 10_000);
    t.match(server.stderr(), /reload failed, the running configuration stays: cannot open base image .*missing\.img/);
    t.strictSame(
      await listed(root),
      [
        ['beta', 'Beta, updated'],
        ['gamma', 'Gamma'],
      ],
      'after two failed reloads, the same exports',
    );

    await py.end();
    t.equal((await server.stop()).code, 0, 'the server stops cleanly');
    t.strictSame(
      readdirSync(join(dir, 'overlays')).filter((f) => f.startsWith('eph-')),
      [],
      'every throwaway overlay is gone, the removed export included',
    );
    for (const guard of guards) await guard.check();
  });
}
