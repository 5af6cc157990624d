import { writeFileSync } from 'node:fs';
import { readFile, symlink } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import t from 'tap';
import { ConfigError } from '../../lib/config/config-error.js';
import { loadConfigFile, parseConfig } from '../../lib/config/config-file.js';
import type { ServerConfig } from '../../lib/config/server-config.js';
import { CONFIG_FILE, configError, MINIMAL, yaml } from '../helpers/config-text.js';
import { ROOT } from '../helpers/processes.js';

const LAB = join(ROOT, 'fixtures', 'config', 'lab.yaml');

/** fixtures/config/lab.yaml as parseConfig must read it, had it come from /etc/nbd-cow/lab.yaml. */
const LAB_CONFIG: ServerConfig = {
  source: '/etc/nbd-cow/lab.yaml',
  listen: [
    { address: { kind: 'tcp', host: '0.0.0.0', port: 10809 } },
    { address: { kind: 'unix', path: '/run/nbd-cow/nbd.sock' }, socketMode: 0o660, socketGroup: 'nbd' },
  ],
  tls: { mode: 'on', certificates: '/etc/nbd-cow/tls', verifyPeer: true },
  allow: ['10.0.0.0/8', '192.168.56.0/24', '::1'],
  maxConnections: 256,
  handshakeTimeout: 10,
  bufferMemory: 512 * 1024 ** 2,
  user: 'nbd',
  group: 'nbd',
  logLevel: 'info',
  logFormat: 'json',
  metrics: { host: '127.0.0.1', port: 9810 },
  exports: [
    {
      name: 'debian',
      base: '/etc/nbd-cow/images/debian-12.img',
      description: 'Debian 12 (bookworm) golden image',
      readOnly: false,
      blockSize: 4096,
      overlays: 'both',
      overlayDir: '/var/lib/nbd-cow/debian',
      maxOverlaySize: 20 * 1024 ** 3,
      maxOverlayDirSize: 200 * 1024 ** 3,
      namedOverlayOwner: 'tls-identity',
      requireTls: false,
    },
    {
      name: 'ubuntu',
      base: '/etc/nbd-cow/images/ubuntu-24.04.img',
      description: 'Ubuntu 24.04 LTS',
      readOnly: false,
      blockSize: 64 * 1024,
      overlays: 'throwaway',
      overlayDir: '/var/lib/nbd-cow/ubuntu',
      maxOverlaySize: 10 * 1024 ** 3,
      maxOverlayDirSize: 100 * 1024 ** 3,
      namedOverlayOwner: 'anyone',
      allow: ['10.1.0.0/16'],
      requireTls: false,
    },
    {
      name: 'windows-installer',
      base: '/srv/images/windows-11-installer.img',
      description: 'Windows 11 installer disk',
      readOnly: true,
      blockSize: 4096,
      overlays: 'both',
      namedOverlayOwner: 'anyone',
      requireTls: true,
    },
  ],
};

t.test('the documented lab example parses to the expected configuration', async (t) => {
  t.strictSame(parseConfig(await readFile(LAB, 'utf8'), CONFIG_FILE), LAB_CONFIG);
});

t.test("doc/config.md's example is the fixture, word for word", async (t) => {
  const doc = await readFile(join(ROOT, 'doc', 'config.md'), 'utf8');
  const example = /## Example\n[\s\S]*?```yaml\n([\s\S]*?)```/.exec(doc)?.[1];
  t.equal(example, await readFile(LAB, 'utf8'));
});

t.test('loadConfigFile reads the file and names it as the source, made absolute', async (t) => {
  const config = await loadConfigFile(LAB);
  t.equal(config.source, LAB);
  t.equal(config.exports[0]?.base, join(ROOT, 'fixtures', 'config', 'images', 'debian-12.img'), 'relative to the file');
  t.strictSame({ ...config, source: '', exports: [] }, { ...LAB_CONFIG, source: '', exports: [] });
});

t.test('a minimal file gets every default, and the server-wide settings stay unset', async (t) => {
  t.strictSame(parseConfig(MINIMAL, CONFIG_FILE), {
    source: CONFIG_FILE,
    listen: [{ address: { kind: 'tcp', host: '127.0.0.1', port: 10809 } }],
    exports: [
      {
        name: 'golden',
        base: '/etc/nbd-cow/golden.img',
        readOnly: false,
        blockSize: 4096,
        overlays: 'both',
        namedOverlayOwner: 'anyone',
        requireTls: false,
      },
    ],
  });
});

t.test('a relative source is made absolute, and the file paths resolve against its directory', async (t) => {
  const config = parseConfig(MINIMAL, 'conf/lab.yaml');
  t.equal(config.source, resolve('conf/lab.yaml'));
  t.equal(config.exports[0]?.base, resolve('conf/golden.img'));
});

t.test('errors name the file as it was given', async (t) => {
  t.equal(
    configError('listen: 3\n', 'lab.yaml').message,
    'lab.yaml:1:1: listen: expected a list of listeners, such as - tcp: 0.0.0.0:10809, not the number 3',
  );
});

t.test('a missing file is a ConfigError naming the path', async (t) => {
  const path = join(t.testdir(), 'nosuch.yaml');
  const err = await loadConfigFile(path).catch((e: unknown) => e);
  t.ok(err instanceof ConfigError);
  t.equal((err as ConfigError).message, `${path}: cannot read the configuration file: no such file (ENOENT)`);
  t.equal((err as ConfigError).line, undefined);
});

t.test('a directory, or a file that cannot be read, is a ConfigError naming the path', async (t) => {
  const dir = t.testdir();
  await t.rejects(loadConfigFile(dir), { message: `${dir}: cannot read the configuration file: it is a directory (EISDIR)` });
  const locked = join(dir, 'locked.yaml');
  writeFileSync(locked, MINIMAL, { mode: 0o000 });
  if (process.getuid?.() === 0) {
    t.comment('running as root: every file is readable, no EACCES to see');
  } else {
    await t.rejects(loadConfigFile(locked), {
      message: `${locked}: cannot read the configuration file: permission denied (EACCES)`,
    });
  }
  const loop = join(dir, 'loop.yaml');
  await symlink(loop, loop);
  await t.rejects(loadConfigFile(loop), { message: new RegExp(`^${loop}: cannot read the configuration file: ELOOP`) });
});

t.test('the top level takes only the documented keys', async (t) => {
  const err = configError(`${MINIMAL}expots: {}\n`);
  t.equal(err.message, `${CONFIG_FILE}:6:1: expots: unknown key "expots" (did you mean "exports"?)`);
  t.equal(
    configError(`${MINIMAL}colour: blue\n`).message,
    `${CONFIG_FILE}:6:1: colour: unknown key "colour"; the keys here are listen, tls, allow, max-connections, ` +
      'handshake-timeout, buffer-memory, user, group, log, metrics, exports',
  );
});

t.test('listen and exports are required', async (t) => {
  t.equal(
    configError('exports:\n  golden:\n    base: golden.img\n').message,
    `${CONFIG_FILE}:1:1: listen: missing (where to accept clients, such as - tcp: 0.0.0.0:10809)`,
  );
  t.equal(
    configError('listen:\n  - tcp: 127.0.0.1:10809\n').message,
    `${CONFIG_FILE}:1:1: exports: missing (the images to serve, such as debian: { base: debian.img })`,
  );
});

t.test('a file that is not a mapping is refused at its first line', async (t) => {
  t.equal(
    configError('\n- tcp: 127.0.0.1:10809\n').message,
    `${CONFIG_FILE}:2:1: expected a mapping of settings, such as listen: and exports:, not a list`,
  );
  t.equal(
    configError('just words\n').message,
    `${CONFIG_FILE}:1:1: expected a mapping of settings, such as listen: and exports:, not the text "just words"`,
  );
});

t.test('metrics cannot share a TCP listener address; port 0 never clashes', async (t) => {
  const clash = yaml`
    listen:
      - unix: /run/nbd.sock
      - tcp: 127.0.0.1:9810
    metrics: 127.0.0.1:9810
    exports: { golden: { base: golden.img } }
  `;
  t.equal(
    configError(clash).message,
    `${CONFIG_FILE}:4:1: metrics: 127.0.0.1:9810 is also listen[1]'s address: metrics need a port of their own`,
  );
  const zero = clash.replaceAll('9810', '0');
  t.strictSame(parseConfig(zero, CONFIG_FILE).metrics, { host: '127.0.0.1', port: 0 });
  t.ok(parseConfig(clash.replace('metrics: 127.0.0.1:9810', 'metrics: 127.0.0.1:9811'), CONFIG_FILE));
});
