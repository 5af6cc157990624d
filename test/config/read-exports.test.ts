import t from 'tap';
import { parseConfig } from '../../lib/config/config-file.js';
import type { ExportConfig } from '../../lib/config/server-config.js';
import { CONFIG_FILE, configError, yaml } from '../helpers/config-text.js';

const LISTEN = 'listen: [{ tcp: 127.0.0.1:10809 }]\n';

/** The exports of LISTEN plus `rest`. */
function exportsOf(rest: string): readonly ExportConfig[] {
  return parseConfig(LISTEN + rest, CONFIG_FILE).exports;
}

/** The error for LISTEN (line 1) plus `rest` (from line 2). */
function messageOf(rest: string): string {
  return configError(LISTEN + rest).message;
}

t.test('every export setting, and the defaults of those left out', async (t) => {
  const text = yaml`
    exports:
      debian:
        base: images/debian.img
        description: Debian 12
        read-only: false
        block-size: 512
        overlays: named
        overlay-dir: overlays
        max-overlay-size: 1
        max-overlay-dir-size: 2K
        elide-base-matches: true
        named-overlays-owner: anyone
        allow: ["::1"]
        require-tls: false
      plain:
        base: /srv/plain.img
  `;
  t.strictSame(exportsOf(text), [
    {
      name: 'debian',
      base: '/etc/nbd-cow/images/debian.img',
      description: 'Debian 12',
      readOnly: false,
      blockSize: 512,
      overlays: 'named',
      overlayDir: '/etc/nbd-cow/overlays',
      maxOverlaySize: 1,
      maxOverlayDirSize: 2048,
      elideBaseMatches: true,
      namedOverlayOwner: 'anyone',
      allow: ['::1'],
      requireTls: false,
    },
    {
      name: 'plain',
      base: '/srv/plain.img',
      readOnly: false,
      blockSize: 4096,
      overlays: 'both',
      namedOverlayOwner: 'anyone',
      requireTls: false,
    },
  ]);
});

t.test('exports is a non-empty mapping from names to settings', async (t) => {
  t.equal(
    messageOf('exports:\n  - base: a.img\n'),
    `${CONFIG_FILE}:2:1: exports: expected a mapping from export names to their settings, such as debian: { base: PATH }, not a list`,
  );
  t.equal(messageOf('exports: {}\n'), `${CONFIG_FILE}:2:1: exports: no exports: name at least one, with its base image`);
  t.equal(
    messageOf('exports:\n  debian:\n'),
    `${CONFIG_FILE}:3:3: exports.debian: expected the settings of an export, at least base: PATH, not an empty value`,
  );
  t.equal(
    messageOf('exports:\n  debian: debian.img\n'),
    `${CONFIG_FILE}:3:3: exports.debian: expected the settings of an export, at least base: PATH, not the text "debian.img"`,
  );
});

t.test('base is required', async (t) => {
  t.equal(
    messageOf('exports:\n  debian:\n    description: no base\n'),
    `${CONFIG_FILE}:3:3: exports.debian.base: missing (the base image this export serves)`,
  );
});

t.test('export names follow the named-overlay rule', async (t) => {
  t.equal(
    messageOf('exports:\n  golden@alice:\n    base: a.img\n'),
    `${CONFIG_FILE}:3:3: exports["golden@alice"]: "golden@alice" is not a valid export name: 1-64 characters from A-Z a-z 0-9 . _ -, not starting with "."`,
  );
  t.match(
    messageOf('exports:\n  .hidden: { base: a.img }\n'),
    /^\S+:3:3: exports\["\.hidden"\]: "\.hidden" is not a valid export name/,
  );
  t.match(
    messageOf(`exports:\n  ${'a'.repeat(65)}: { base: a.img }\n`),
    /:3:3: exports\.a{65}: "a{60}…" is not a valid export name/,
  );
  t.strictSame(
    exportsOf('exports:\n  24.04: { base: a.img }\n  ubuntu-24.04: { base: b.img }\n').map((e) => e.name),
    ['24.04', 'ubuntu-24.04'],
    'a name YAML would read as a number keeps its text',
  );
});

t.test('two exports with one name are refused, naming both lines', async (t) => {
  t.equal(
    messageOf('exports:\n  debian: { base: a.img }\n  ubuntu: { base: b.img }\n  debian: { base: c.img }\n'),
    `${CONFIG_FILE}:5:3: exports.debian: defined twice, on line 3 and on line 5`,
  );
});

t.test('two exports may share an overlay directory: overlay files are named by export', async (t) => {
  const shared = exportsOf(
    'exports:\n  a: { base: a.img, overlay-dir: /var/lib/o }\n  b: { base: b.img, overlay-dir: /var/lib/o }\n',
  );
  t.strictSame(
    shared.map((e) => e.overlayDir),
    ['/var/lib/o', '/var/lib/o'],
  );
});

t.test('unknown keys get a hint', async (t) => {
  t.equal(
    messageOf('exports:\n  debian:\n    base: a.img\n    readonly: true\n'),
    `${CONFIG_FILE}:5:5: exports.debian.readonly: unknown key "readonly" (did you mean "read-only"?)`,
  );
  t.equal(
    messageOf('exports:\n  debian:\n    base: a.img\n    named_overlays_owner: anyone\n'),
    `${CONFIG_FILE}:5:5: exports.debian.named_overlays_owner: unknown key "named_overlays_owner" (did you mean "named-overlays-owner"?)`,
  );
});

t.test('block-size: a power of two from 512 to 1M, as a number or a size', async (t) => {
  const at = 'exports:\n  debian:\n    base: a.img\n    block-size: ';
  t.equal(exportsOf(`${at}1M\n`)[0]?.blockSize, 1024 * 1024);
  t.equal(
    messageOf(`${at}3000\n`),
    `${CONFIG_FILE}:5:5: exports.debian.block-size: 3000 is not a power of two from 512 to 1048576`,
  );
  t.equal(
    messageOf(`${at}256\n`),
    `${CONFIG_FILE}:5:5: exports.debian.block-size: 256 is not a power of two from 512 to 1048576`,
  );
  t.equal(
    messageOf(`${at}2M\n`),
    `${CONFIG_FILE}:5:5: exports.debian.block-size: 2097152 is not a power of two from 512 to 1048576`,
  );
});

t.test('types are strict: no text for a boolean, no number for text', async (t) => {
  const at = 'exports:\n  debian:\n    base: a.img\n    ';
  t.equal(
    messageOf(`${at}read-only: "true"\n`),
    `${CONFIG_FILE}:5:5: exports.debian.read-only: expected true or false, not the text "true"`,
  );
  t.equal(
    messageOf(`${at}read-only: yes\n`),
    `${CONFIG_FILE}:5:5: exports.debian.read-only: expected true or false, not the text "yes"`,
  );
  t.equal(
    messageOf(`${at}description: 12\n`),
    `${CONFIG_FILE}:5:5: exports.debian.description: expected text, not the number 12`,
  );
  t.equal(
    messageOf(`${at}overlays: all\n`),
    `${CONFIG_FILE}:5:5: exports.debian.overlays: expected "throwaway", "named" or "both", not the text "all"`,
  );
  t.equal(
    messageOf(`${at}named-overlays-owner: alice\n`),
    `${CONFIG_FILE}:5:5: exports.debian.named-overlays-owner: expected "anyone" or "tls-identity", not the text "alice"`,
  );
  t.equal(
    messageOf(`${at}overlay-dir: ""\n`),
    `${CONFIG_FILE}:5:5: exports.debian.overlay-dir: expected a path, not an empty string`,
  );
  t.equal(
    messageOf(`${at}allow: []\n`),
    `${CONFIG_FILE}:5:5: exports.debian.allow: an empty list admits no TCP client; leave allow out to admit everyone`,
  );
});

t.test('space limits: at least one byte', async (t) => {
  const at = 'exports:\n  debian:\n    base: a.img\n    ';
  for (const key of ['max-overlay-size', 'max-overlay-dir-size']) {
    t.equal(
      messageOf(`${at}${key}: 0\n`),
      `${CONFIG_FILE}:5:5: exports.debian.${key}: expected a limit of at least 1 byte (leave the key out for no limit)`,
    );
  }
  t.equal(
    messageOf(`${at}max-overlay-size: 20 G\n`),
    `${CONFIG_FILE}:5:5: exports.debian.max-overlay-size: expected a size in bytes such as 4096, 64K, 512M or 10G (K, M, G, T: powers of 1024), not the text "20 G"`,
  );
});

t.test('require-tls defaults to true when tls.mode is require, else false', async (t) => {
  const exports = 'exports:\n  debian: { base: a.img }\n';
  t.equal(exportsOf(`tls: { mode: require, psk: /k.psk }\n${exports}`)[0]?.requireTls, true);
  t.equal(exportsOf(`tls: { mode: on, psk: /k.psk }\n${exports}`)[0]?.requireTls, false);
  t.equal(exportsOf(`tls: { mode: off }\n${exports}`)[0]?.requireTls, false);
  t.equal(exportsOf(exports)[0]?.requireTls, false);
  t.equal(
    exportsOf(`tls: { mode: on, psk: /k.psk }\nexports:\n  debian: { base: a.img, require-tls: true }\n`)[0]?.requireTls,
    true,
  );
});

t.test('TLS-only settings need TLS on or require', async (t) => {
  t.equal(
    messageOf('exports:\n  debian:\n    base: a.img\n    require-tls: true\n'),
    `${CONFIG_FILE}:5:5: exports.debian.require-tls: needs TLS: set tls.mode to on or require, with credentials`,
  );
  t.equal(
    messageOf('tls: { mode: off }\nexports:\n  debian:\n    base: a.img\n    named-overlays-owner: tls-identity\n'),
    `${CONFIG_FILE}:6:5: exports.debian.named-overlays-owner: tls-identity needs TLS: set tls.mode to on or require, with credentials`,
  );
  t.equal(
    exportsOf('tls: { mode: on, psk: /k.psk }\nexports:\n  debian: { base: a.img, named-overlays-owner: tls-identity }\n')[0]
      ?.namedOverlayOwner,
    'tls-identity',
  );
});

t.test('require-tls: false cannot hold when tls.mode is require', async (t) => {
  t.equal(
    messageOf('tls: { mode: require, psk: /k.psk }\nexports:\n  debian:\n    base: a.img\n    require-tls: false\n'),
    `${CONFIG_FILE}:6:5: exports.debian.require-tls: cannot be false while tls.mode is require: every client must start TLS first`,
  );
});

t.test('layers: a list of paths, bottom first, resolved like base', async (t) => {
  const text = yaml`
    exports:
      golden:
        base: images/golden.img
        layers: [layers/tools.cow, /srv/layers/updates.cow, ../shared/site.cow]
      plain:
        base: plain.img
      empty:
        base: e.img
        layers: []
  `;
  const [golden, plain, empty] = exportsOf(text);
  t.strictSame(golden?.layers, ['/etc/nbd-cow/layers/tools.cow', '/srv/layers/updates.cow', '/etc/shared/site.cow']);
  t.equal(golden?.base, '/etc/nbd-cow/images/golden.img');
  t.equal(plain?.name, 'plain');
  t.notOk(Object.hasOwn(plain ?? {}, 'layers'), 'absent: no layers key');
  t.strictSame(empty?.layers, [], 'an empty list: no layers');
  t.strictSame(
    parseConfig(`${LISTEN}exports:\n  g:\n    base: g.img\n    layers:\n      - a.cow\n      - b/c.cow\n`, '/srv/cfg/nbd.yaml')
      .exports[0]?.layers,
    ['/srv/cfg/a.cow', '/srv/cfg/b/c.cow'],
    "a block list, against the config file's own directory",
  );
});

t.test('layers: anything but a list of paths is refused, naming the line and key', async (t) => {
  const at = 'exports:\n  debian:\n    base: a.img\n    ';
  t.equal(
    messageOf(`${at}layers: tools.cow\n`),
    `${CONFIG_FILE}:5:5: exports.debian.layers: expected a list of frozen overlay files, bottom first, such as [layers/tools.cow], not the text "tools.cow"`,
  );
  t.equal(
    messageOf(`${at}layers: { a: b }\n`),
    `${CONFIG_FILE}:5:5: exports.debian.layers: expected a list of frozen overlay files, bottom first, such as [layers/tools.cow], not a mapping`,
  );
  t.equal(
    messageOf(`${at}layers:\n      - a.cow\n      - 12\n`),
    `${CONFIG_FILE}:7:9: exports.debian.layers[1]: expected a path, not the number 12`,
  );
  t.equal(
    messageOf(`${at}layers: [a.cow, ""]\n`),
    `${CONFIG_FILE}:5:21: exports.debian.layers[1]: expected a path, not an empty string`,
  );
  t.equal(
    messageOf(`${at}layer: [a.cow]\n`),
    `${CONFIG_FILE}:5:5: exports.debian.layer: unknown key "layer" (did you mean "layers"?)`,
  );
});

t.test('a remote base: the URL kept as written, and its cache and fetch settings', async (t) => {
  const text = yaml`
    exports:
      golden:
        base: https://images.example/golden.raw
        cache-dir: cache
        cache-size: 20G
        prefetch: true
        remote-timeout: 2.5
        remote-retries: 0
      plain:
        base: http://images.example/plain.raw
      bucket:
        base: s3://images/golden.raw
        s3-endpoint: http://rgw.lab:7480
        s3-region: eu-west-1
        s3-profile: lab
  `;
  const [golden, plain, bucket] = exportsOf(text);
  t.equal(bucket?.base, 's3://images/golden.raw');
  t.strictSame(bucket?.remote, { s3: { endpoint: 'http://rgw.lab:7480', region: 'eu-west-1', profile: 'lab' } });
  t.equal(golden?.base, 'https://images.example/golden.raw', 'not resolved as a path');
  t.strictSame(golden?.remote, {
    cacheDir: '/etc/nbd-cow/cache',
    cacheSize: 20 * 2 ** 30,
    prefetch: true,
    timeoutMs: 2500,
    retries: 0,
  });
  t.equal(plain?.base, 'http://images.example/plain.raw');
  t.equal(plain?.remote, undefined, 'no remote settings: none given');
  t.match(messageOf('exports: { g: { base: https://x/g.raw, cache-size: 1M } }\n'), /cache-size.*expected at least 16M/);
  t.match(messageOf('exports: { g: { base: https://x/g.raw, remote-timeout: 0 } }\n'), /remote-timeout.*above 0/);
  t.match(
    messageOf('exports: { g: { base: https://x/g.raw, remote-retries: 1.5 } }\n'),
    /remote-retries.*whole number from 0 to 20/,
  );
  t.match(messageOf('exports: { g: { base: https://x/g.raw, prefetch: yes please } }\n'), /prefetch.*true or false/);
});
