import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import {
  DEFAULT_BLOCK_SIZE,
  DEFAULT_PORT,
  defaultExportName,
  defaultOverlayDir,
  formatUri,
  startServer,
  validateBlockSize,
} from '../lib/index.js';
import { within } from './helpers/wait.js';

t.test('defaults', async (t) => {
  t.equal(DEFAULT_BLOCK_SIZE, 4096);
  t.equal(DEFAULT_PORT, 10809, 'the IANA NBD port');
  t.match(defaultOverlayDir(), /nbd-cow-\d+$/);
});

t.test('defaultExportName: the file name without its extension', async (t) => {
  const cases: [string, string][] = [
    ['golden.img', 'golden'],
    ['/var/lib/images/disk.qcow2', 'disk'],
    ['relative/dir/win10.raw', 'win10'],
    ['archive.tar.gz', 'archive.tar'],
    ['noext', 'noext'],
    ['.hidden', '.hidden'],
    ['/a/b/.hidden.img', '.hidden'],
    ['trailing.', 'trailing'],
    ['spaces in name.img', 'spaces in name'],
  ];
  for (const [path, name] of cases) t.equal(defaultExportName(path), name, path);
});

t.test('formatUri: TCP', async (t) => {
  t.equal(formatUri({ kind: 'tcp', host: '127.0.0.1', port: 10809 }, 'golden'), 'nbd://127.0.0.1:10809/golden');
  t.equal(formatUri({ kind: 'tcp', host: '127.0.0.1', port: 10809 }, 'golden', true), 'nbds://127.0.0.1:10809/golden', 'TLS');
  t.equal(formatUri({ kind: 'tcp', host: 'localhost', port: 1 }, ''), 'nbd://localhost:1/');
  t.equal(formatUri({ kind: 'tcp', host: '::1', port: 10809 }, 'golden'), 'nbd://[::1]:10809/golden', 'IPv6 in brackets');
  t.equal(formatUri({ kind: 'tcp', host: '0.0.0.0', port: 5 }, 'a b/c?d'), 'nbd://0.0.0.0:5/a%20b%2Fc%3Fd', 'name escaped');
  const parsed = new URL(formatUri({ kind: 'tcp', host: 'fe80::1', port: 42 }, 'ünï'));
  t.equal(parsed.protocol, 'nbd:');
  t.equal(parsed.hostname, '[fe80::1]');
  t.equal(parsed.port, '42');
  t.equal(decodeURIComponent(parsed.pathname.slice(1)), 'ünï');
});

t.test('formatUri: unix socket (nbd+unix:///name?socket=path)', async (t) => {
  const uri = formatUri({ kind: 'unix', path: '/tmp/my dir/nbd.sock' }, 'golden');
  t.match(uri, /^nbd\+unix:\/\/\/golden\?socket=/);
  t.match(formatUri({ kind: 'unix', path: '/s' }, 'golden', true), /^nbds\+unix:\/\/\/golden\?socket=%2Fs$/, 'TLS');
  const parsed = new URL(uri);
  t.equal(parsed.protocol, 'nbd+unix:');
  t.equal(parsed.pathname, '/golden');
  t.equal(parsed.searchParams.get('socket'), '/tmp/my dir/nbd.sock', 'the socket path round-trips');
  t.equal(
    new URL(formatUri({ kind: 'unix', path: '/s&x=1' }, '')).searchParams.get('socket'),
    '/s&x=1',
    'query characters escaped',
  );
});

t.test('validateBlockSize: powers of two from 512 to 1 MiB', async (t) => {
  for (const ok of [512, 1024, 4096, 65536, 1024 * 1024]) t.doesNotThrow(() => validateBlockSize(ok), `${ok}`);
  for (const bad of [0, -512, 256, 511, 513, 1000, 3 * 4096, 2 * 1024 * 1024, 4096.5, NaN, Infinity]) {
    t.throws(() => validateBlockSize(bad), { message: /is not a power of two from 512 to 1048576/ }, `${bad}`);
  }
});

t.test('startServer: bad options fail before listening', async (t) => {
  const dir = t.testdir({});
  const base = join(dir, 'base.img');
  writeFileSync(base, Buffer.alloc(4096, 1));
  await t.rejects(
    startServer({
      base,
      listen: { kind: 'tcp', host: '127.0.0.1', port: 0 },
      blockSize: 1000,
      overlayDir: dir,
      logLevel: 'silent',
    }),
    { message: /block size 1000/ },
  );
  await t.rejects(
    startServer({
      base: join(dir, 'missing.img'),
      listen: { kind: 'tcp', host: '127.0.0.1', port: 0 },
      overlayDir: dir,
      logLevel: 'silent',
    }),
    { message: /missing\.img/ },
  );
  await t.rejects(
    startServer({ base, listen: { kind: 'tcp', host: '127.0.0.1', port: 0 }, overlayDir: base, logLevel: 'silent' }),
    { message: /overlay directory .* is not usable/ },
    'a file as the overlay directory',
  );
});

t.test('startServer: uri, address, exportName, overlayDir', async (t) => {
  const dir = t.testdir({});
  const base = join(dir, 'golden.img');
  writeFileSync(base, Buffer.alloc(4096, 1));
  const server = await startServer({
    base,
    listen: { kind: 'tcp', host: '127.0.0.1', port: 0 },
    overlayDir: join(dir, 'ov'),
    logLevel: 'silent',
  });
  t.teardown(() => within(server.stop(), 10_000, 'stop'));
  if (server.address.kind !== 'tcp') {
    t.fail('tcp expected');
    return;
  }
  t.ok(server.address.port > 0, 'a real port');
  t.equal(server.exportName, 'golden');
  t.equal(server.uri, `nbd://127.0.0.1:${server.address.port}/golden`);
  t.equal(server.overlayDir, join(dir, 'ov'));
  t.equal(server.connectionCount, 0);
  const named = await startServer({
    base,
    exportName: 'other name',
    listen: { kind: 'tcp', host: '127.0.0.1', port: 0 },
    overlayDir: join(dir, 'ov'),
    logLevel: 'silent',
  });
  t.teardown(() => within(named.stop(), 10_000, 'stop'));
  t.match(named.uri, /\/other%20name$/);
});
