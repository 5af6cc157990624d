// The overlay commands on a remote base: `overlay create`, `check` and `commit` take --base URL,
// reading it through a cache of their own (removed when they exit), so they work while a server
// holds the URL's cache; an overlay made for the URL is refused against the local copy.

import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { requireClients } from '../helpers/clients.js';
import { requireNginx, startNginx } from '../helpers/nginx.js';
import { describeRun, run } from '../helpers/processes.js';
import { runCli, startServe } from '../helpers/server-process.js';

const SIZE = 4 * 1024 * 1024;

/** The tools' private caches left in the temp dir. */
const toolCaches = (): string[] => readdirSync(tmpdir()).filter((n) => n.startsWith('nbd-cow-tool-cache-'));

if (requireNginx(t) && requireClients(t, ['qemu-io'])) {
  t.test('create, check and commit with --base URL, a server running on the same URL', async (t) => {
    const dir = t.testdir({ www: {}, overlays: {} });
    const image = randomBytes(SIZE);
    writeFileSync(join(dir, 'www', 'golden.raw'), image);
    const nginx = await startNginx(t, { root: join(dir, 'www') });
    const url = nginx.url('golden.raw');
    const secretUrl = url.replace('http://', 'http://user:secret@');
    const overlays = join(dir, 'overlays');
    const server = await startServe(t, url, ['--cache-dir', join(dir, 'cache'), '--overlay-dir', overlays]);
    const cachesBefore = toolCaches();

    const file = join(overlays, 'named-golden@vm1.cow');
    const created = await runCli(['overlay', 'create', file, '--base', secretUrl]);
    t.equal(created.code, 0, describeRun(created));
    t.match(created.stdout, `created, empty, for ${url}`);
    t.notMatch(created.stdout + created.stderr, /secret/, 'the credentials are not shown');

    const write = await run('qemu-io', [
      '-f',
      'raw',
      '-c',
      'write -P 0x5a 1M 64k',
      server.uri.replace(/\/golden$/, '/golden@vm1'),
    ]);
    t.equal(write.code, 0, describeRun(write));
    t.equal((await server.stop()).code, 0);

    const checked = await runCli(['overlay', 'check', file, '--base', url]);
    t.equal(checked.code, 0, `clean, for the URL (${describeRun(checked)})`);
    const local = await runCli(['overlay', 'check', file, '--base', join(dir, 'www', 'golden.raw')]);
    t.equal(local.code, 4, 'made for the URL: refused against the local copy (another identity)');

    const out = join(dir, 'new.raw');
    const committed = await runCli(['overlay', 'commit', file, '--base', url, '-o', out, '--quiet']);
    t.equal(committed.code, 0, describeRun(committed));
    const expected = Buffer.from(image);
    expected.fill(0x5a, 1024 * 1024, 1024 * 1024 + 65536);
    t.ok(readFileSync(out).equals(expected), 'base from the URL + the overlay, byte for byte');
    t.same(toolCaches(), cachesBefore, "the tools' caches are gone");
    t.notOk(existsSync(`${out}.tmp`));
  });
}
