// ConfiguredExports: the exports of a server built from ExportConfig objects on real base files,
// and reload(): what it reports, which backings it keeps (a policy-only change keeps the base and
// the named overlays open on it), which it replaces and retires, and that a reload that fails
// changes nothing. Also the checks made before anything opens, the overlay directory (made 0700,
// swept once) and close().

import { existsSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import type { BlockDevice } from '../../lib/block/device.js';
import type { ExportConfig } from '../../lib/config/server-config.js';
import { createLogger } from '../../lib/log.js';
import { NBD_REP_ERR_POLICY, NBD_REP_ERR_TLS_REQD } from '../../lib/protocol/constants.js';
import { OptionError } from '../../lib/protocol/errors.js';
import { ConfiguredExports, type ExportsContext } from '../../lib/server/configured-exports.js';
import type { ClientIdentity, Export } from '../../lib/server/exports.js';
import { NO_EVENTS } from '../../lib/server/server-events.js';
import type { TlsMode } from '../../lib/server/tls-credentials.js';
import { writeBaseFile } from '../helpers/bases.js';
import { fdsOn } from '../helpers/files.js';
import { deadPid } from '../helpers/processes.js';
import { waitFor } from '../helpers/wait.js';

const SIZE = 64 * 1024;
const BLOCK = 4096;
const W = { fua: false };

interface Lab {
  readonly dir: string;
  readonly overlayDir: string;
  /** Base files by name (`alpha.img` ...), each a different pattern. */
  readonly bases: Record<string, { path: string; bytes: Buffer }>;
  readonly context: ExportsContext;
  /** Lines the context's logger wrote. */
  readonly lines: string[];
  /** ConfiguredExports.open with this lab's context, closed at teardown. */
  open(configs: readonly ExportConfig[]): Promise<ConfiguredExports>;
  config(name: string, base: string, extra?: Partial<ExportConfig>): ExportConfig;
}

function lab(t: Test, options: { tlsMode?: TlsMode } = {}): Lab {
  const dir = t.testdir();
  const bases: Lab['bases'] = {};
  for (const [i, name] of ['alpha.img', 'beta.img', 'gamma.img'].entries()) {
    const base = writeBaseFile(dir, SIZE * (i + 1), name);
    // Different contents too: a device shows which base it reads.
    base.bytes.fill(0x10 * (i + 1), 0, BLOCK);
    writeFileSync(base.path, base.bytes);
    bases[name] = base;
  }
  const overlayDir = join(dir, 'overlays');
  const lines: string[] = [];
  const context: ExportsContext = {
    log: createLogger('info', (line) => lines.push(line)),
    events: NO_EVENTS,
    tlsMode: options.tlsMode ?? 'off',
    defaultOverlayDir: overlayDir,
    privilegeTarget: null,
  };
  return {
    dir,
    overlayDir,
    bases,
    context,
    lines,
    async open(configs) {
      const exports = await ConfiguredExports.open(configs, context);
      t.teardown(() => exports.close());
      return exports;
    },
    config(name, base, extra = {}) {
      return {
        name,
        base: join(dir, base),
        readOnly: false,
        blockSize: BLOCK,
        overlays: 'both',
        namedOverlayOwner: 'anyone',
        requireTls: false,
        ...extra,
      };
    },
  };
}

function names(exports: ConfiguredExports): string[] {
  return exports.table.list().map((e) => e.name);
}

function found(exports: ConfiguredExports, name: string, client?: ClientIdentity): Export {
  const exp = exports.table.lookup(name, client);
  if (exp === undefined) throw new Error(`no export ${name}`);
  return exp;
}

async function readAt(device: BlockDevice, offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  await device.read(offset, buf);
  return buf;
}

t.test('the table lists the configured exports, in order, with their descriptions and sizes', async (t) => {
  const l = lab(t);
  const configs = [
    l.config('beta', 'beta.img', { description: 'Beta, the second' }),
    l.config('alpha', 'alpha.img'),
    l.config('ro', 'gamma.img', { readOnly: true }),
  ];
  const exports = await l.open(configs);
  t.strictSame(names(exports), ['beta', 'alpha', 'ro']);
  t.strictSame(
    exports.table.list().map((e) => [e.description, e.size, e.readOnly, e.preferredBlockSize]),
    [
      ['Beta, the second', 2 * SIZE, false, BLOCK],
      ['alpha.img with a private copy-on-write overlay', SIZE, false, BLOCK],
      ['gamma.img, read-only', 3 * SIZE, true, BLOCK],
    ],
  );
  t.equal(exports.configs, configs, 'configs are the ones given');
  t.equal(found(exports, '').name, 'beta', '"" is the first export');
  t.equal(exports.overlayDirOf(configs[1] as ExportConfig), l.overlayDir, 'no overlay-dir: the default');
  const own = l.config('x', 'alpha.img', { overlayDir: join(l.dir, 'own') });
  t.equal(exports.overlayDirOf(own), join(l.dir, 'own'));
});

t.test('devices read their own base; throwaway overlays of every export share one counter', async (t) => {
  const l = lab(t);
  const exports = await l.open([l.config('alpha', 'alpha.img'), l.config('beta', 'beta.img')]);
  const a = await found(exports, 'alpha').openDevice();
  const b = await found(exports, 'beta').openDevice();
  t.same(await readAt(a, 0, BLOCK), l.bases['alpha.img']?.bytes.subarray(0, BLOCK));
  t.same(await readAt(b, 0, BLOCK), l.bases['beta.img']?.bytes.subarray(0, BLOCK));
  await a.write(0, Buffer.alloc(BLOCK, 1), W);
  await b.write(0, Buffer.alloc(BLOCK, 2), W);
  t.strictSame(
    readdirSync(l.overlayDir).sort(),
    [`eph-${process.pid}-1.cow`, `eph-${process.pid}-2.cow`],
    'two exports in one overlay directory never pick the same file name',
  );
  await a.close();
  await b.close();
  t.strictSame(readdirSync(l.overlayDir), []);
});

t.test('per-export requireTls and allow reach the table', async (t) => {
  const l = lab(t, { tlsMode: 'on' });
  const exports = await l.open([
    l.config('secret', 'alpha.img', { requireTls: true }),
    l.config('lab', 'beta.img', { allow: ['10.0.0.0/8'] }),
  ]);
  const plain: ClientIdentity = { tlsIdentity: undefined, tls: false, peerAddress: '192.168.1.1' };
  t.throws(() => exports.table.lookup('secret', plain), new OptionError(NBD_REP_ERR_TLS_REQD, ''), 'secret needs TLS');
  t.equal(found(exports, 'secret', { ...plain, tls: true }).name, 'secret');
  t.throws(() => exports.table.lookup('lab', plain), new OptionError(NBD_REP_ERR_POLICY, ''), 'lab refuses 192.168.1.1');
  t.equal(found(exports, 'lab', { ...plain, peerAddress: '10.0.0.1' }).name, 'lab');
});

t.test('reload() reports what was added, removed and changed', async (t) => {
  const l = lab(t);
  const exports = await l.open([l.config('alpha', 'alpha.img'), l.config('beta', 'beta.img')]);
  t.strictSame(await exports.reload([l.config('alpha', 'alpha.img'), l.config('beta', 'beta.img')]), {
    added: [],
    removed: [],
    changed: [],
  });
  const next = [l.config('beta', 'beta.img', { description: 'new' }), l.config('gamma', 'gamma.img')];
  t.strictSame(await exports.reload(next), { added: ['gamma'], removed: ['alpha'], changed: ['beta'] });
  t.strictSame(names(exports), ['beta', 'gamma']);
  t.equal(exports.configs, next);
  t.equal(exports.table.lookup('alpha'), undefined, 'a removed export is unknown to new connections');
  t.equal(found(exports, 'beta').description, 'new');
  t.equal(found(exports, '').name, 'beta', 'the new first export is the default');
});

t.test('a reload that changes only the description keeps the backing and what is open on it', async (t) => {
  const l = lab(t);
  const alphaBase = l.bases['alpha.img']?.path ?? '';
  const exports = await l.open([l.config('alpha', 'alpha.img', { description: 'before' })]);
  const named = await found(exports, 'alpha@alice').openDevice();
  const plain = await found(exports, 'alpha').openDevice();
  await named.write(0, Buffer.alloc(BLOCK, 0xaa), W);
  await plain.write(0, Buffer.alloc(BLOCK, 0xbb), W);
  t.equal(fdsOn(alphaBase), 1, 'the base is open once');

  const summary = await exports.reload([l.config('alpha', 'alpha.img', { description: 'after' })]);
  t.strictSame(summary, { added: [], removed: [], changed: ['alpha'] });
  t.equal(found(exports, 'alpha').description, 'after', 'the new description shows at once');
  t.equal(fdsOn(alphaBase), 1, 'the base was not opened again');

  // A second backing would have its own named overlays and find alice locked ("in use").
  const again = await found(exports, 'alpha@alice').openDevice();
  t.same(await readAt(again, 0, BLOCK), Buffer.alloc(BLOCK, 0xaa), 'the named overlay attaches again and shares the data');
  t.same(await readAt(plain, 0, BLOCK), Buffer.alloc(BLOCK, 0xbb), 'the device opened before still reads its overlay');
  await plain.write(BLOCK, Buffer.alloc(BLOCK, 0xcc), W);
  t.same(await readAt(plain, BLOCK, BLOCK), Buffer.alloc(BLOCK, 0xcc), 'and writes');
  for (const device of [named, again, plain]) await device.close();
  t.equal(fdsOn(alphaBase), 1, 'the kept backing stays open after its devices close');
  t.same(await readAt(await found(exports, 'alpha').openDevice(), 0, 16), l.bases['alpha.img']?.bytes.subarray(0, 16));
});

t.test('a reload that changes the policy only (overlays, allow, requireTls) keeps the backing too', async (t) => {
  const l = lab(t, { tlsMode: 'on' });
  const alphaBase = l.bases['alpha.img']?.path ?? '';
  const exports = await l.open([l.config('alpha', 'alpha.img')]);
  const named = await found(exports, 'alpha@alice').openDevice();
  await exports.reload([l.config('alpha', 'alpha.img', { overlays: 'named', allow: ['127.0.0.1'], requireTls: true })]);
  t.equal(fdsOn(alphaBase), 1, 'the base was not opened again');
  const tls: ClientIdentity = { tlsIdentity: undefined, tls: true, peerAddress: '127.0.0.1' };
  const again = await found(exports, 'alpha@alice', tls).openDevice();
  await again.close();
  await named.close();
  await t.rejects(
    found(exports, 'alpha', tls).openDevice(),
    new OptionError(NBD_REP_ERR_POLICY, ''),
    'the new overlay policy applies',
  );
});

t.test('a reload with another base opens a new backing and retires the old once its device closes', async (t) => {
  const l = lab(t);
  const alphaBase = l.bases['alpha.img']?.path ?? '';
  const betaBase = l.bases['beta.img']?.path ?? '';
  const exports = await l.open([l.config('disk', 'alpha.img')]);
  const before = await found(exports, 'disk').openDevice();
  const beforeNamed = await found(exports, 'disk@alice').openDevice();
  await beforeNamed.write(0, Buffer.alloc(BLOCK, 0x99), W);

  t.strictSame(await exports.reload([l.config('disk', 'beta.img')]), { added: [], removed: [], changed: ['disk'] });
  t.equal(fdsOn(betaBase), 1, 'the new base is open');
  t.equal(fdsOn(alphaBase), 1, 'the old base stays open while devices use it');
  t.equal(found(exports, 'disk').size, 2 * SIZE, "the export has the new base's size");
  const after = await found(exports, 'disk').openDevice();
  t.same(await readAt(after, 0, BLOCK), l.bases['beta.img']?.bytes.subarray(0, BLOCK), 'a new device reads the new base');
  t.same(
    await readAt(before, 0, BLOCK),
    l.bases['alpha.img']?.bytes.subarray(0, BLOCK),
    'the old device still reads the old one',
  );
  t.same(await readAt(beforeNamed, 0, BLOCK), Buffer.alloc(BLOCK, 0x99), 'and the old named overlay its data');

  await before.close();
  t.equal(fdsOn(alphaBase), 1, 'one device still on the old base');
  await beforeNamed.close();
  t.equal(fdsOn(alphaBase), 0, 'the old base is closed with its last device');
  t.equal(fdsOn(betaBase), 1, 'the new one is not');
  t.same(await readAt(after, BLOCK, BLOCK), l.bases['beta.img']?.bytes.subarray(BLOCK, 2 * BLOCK));
  await after.close();
});

t.test('a backing no export uses any more, with no device open, is closed after the reload', async (t) => {
  const l = lab(t);
  const alphaBase = l.bases['alpha.img']?.path ?? '';
  const exports = await l.open([l.config('alpha', 'alpha.img'), l.config('beta', 'beta.img')]);
  t.equal(fdsOn(alphaBase), 1);
  // The reload does not wait for retired backings to close: they close behind it.
  await exports.reload([l.config('beta', 'beta.img')]);
  await waitFor(() => fdsOn(alphaBase) === 0, "the removed export's base to close");
  t.pass('removed: its base is closed');
  await exports.reload([l.config('beta', 'beta.img'), l.config('alpha', 'alpha.img')]);
  t.equal(fdsOn(alphaBase), 1, 'added again: opened anew');
  await exports.reload([l.config('beta', 'beta.img'), l.config('alpha2', 'alpha.img')]);
  await waitFor(() => fdsOn(alphaBase) === 1, 'the backing of the old name to close');
  t.pass('renamed: a new backing (named overlays are named after the export), the old one closed');
});

t.test('a reload naming a missing base throws and leaves the table as it was', async (t) => {
  const l = lab(t);
  const betaBase = l.bases['beta.img']?.path ?? '';
  const configs = [l.config('alpha', 'alpha.img', { description: 'Alpha' })];
  const exports = await l.open(configs);
  const device = await found(exports, 'alpha').openDevice();
  await t.rejects(
    exports.reload([
      l.config('alpha', 'alpha.img', { description: 'changed' }),
      l.config('beta', 'beta.img'),
      l.config('missing', 'missing.img'),
    ]),
    { code: 'ENOENT', message: /cannot open base image .*missing\.img: no such file/ },
  );
  t.strictSame(names(exports), ['alpha'], 'the list is unchanged');
  t.equal(found(exports, 'alpha').description, 'Alpha', 'so is the description');
  t.equal(exports.table.lookup('beta'), undefined, 'the export that did open is not served');
  t.equal(exports.configs, configs, 'configs are the old ones');
  t.equal(fdsOn(betaBase), 0, 'the base the failed reload opened is closed again');
  t.same(await readAt(device, 0, 16), l.bases['alpha.img']?.bytes.subarray(0, 16), 'a device opened before goes on');
  await device.close();
  const fresh = await found(exports, 'alpha').openDevice();
  t.same(await readAt(fresh, 0, 16), l.bases['alpha.img']?.bytes.subarray(0, 16), 'and new devices open');
  await fresh.close();
  t.strictSame(
    await exports.reload([l.config('alpha', 'alpha.img', { description: 'changed' })]),
    { added: [], removed: [], changed: ['alpha'] },
    'the next reload compares with the configuration still running',
  );
});

t.test('checks before anything opens: block size, TLS needs, an empty list, duplicate names', async (t) => {
  const l = lab(t);
  await t.rejects(l.open([l.config('alpha', 'alpha.img', { blockSize: 3000 })]), {
    code: 'EINVAL',
    message: /block size 3000 is not a power of two/,
  });
  await t.rejects(l.open([l.config('alpha', 'alpha.img', { requireTls: true })]), {
    message: 'export alpha requires TLS, but TLS is off',
  });
  await t.rejects(l.open([l.config('alpha', 'alpha.img', { namedOverlayOwner: 'tls-identity' })]), {
    message: /export alpha: named overlays owned by the TLS identity need TLS/,
  });
  await t.rejects(l.open([]), { message: 'no export is configured' });
  await t.rejects(l.open([l.config('alpha', 'alpha.img'), l.config('alpha', 'beta.img')]), {
    message: 'export "alpha" is configured twice',
  });
  for (const name of ['alpha.img', 'beta.img']) t.equal(fdsOn(l.bases[name]?.path ?? ''), 0, `${name} is not left open`);

  const exports = await l.open([l.config('alpha', 'alpha.img')]);
  for (const [what, configs] of [
    ['block size 3000', [l.config('alpha', 'alpha.img', { blockSize: 3000 })]],
    ['requireTls', [l.config('alpha', 'alpha.img', { requireTls: true })]],
    ['tls-identity', [l.config('alpha', 'alpha.img', { namedOverlayOwner: 'tls-identity' })]],
    ['no export', []],
    ['a duplicate', [l.config('beta', 'beta.img'), l.config('beta', 'beta.img')]],
  ] as const) {
    await t.rejects(exports.reload(configs), Error, `reload: ${what} throws`);
    t.strictSame(names(exports), ['alpha'], `reload: ${what} changes nothing`);
  }
  t.equal(fdsOn(l.bases['beta.img']?.path ?? ''), 0, 'no base is left open by the failed reloads');
});

t.test('with TLS on, exports that need TLS are accepted', async (t) => {
  for (const tlsMode of ['on', 'require'] as const) {
    const l = lab(t, { tlsMode });
    const exports = await l.open([
      l.config('alpha', 'alpha.img', { requireTls: true }),
      l.config('beta', 'beta.img', { namedOverlayOwner: 'tls-identity' }),
    ]);
    t.strictSame(names(exports), ['alpha', 'beta'], `tls ${tlsMode}`);
  }
});

t.test('the overlay directory is made 0700, its dead-process overlays swept once', async (t) => {
  const l = lab(t);
  const dead = deadPid();
  const overlayDir = join(l.dir, 'deep', 'overlays');
  const exports = await l.open([l.config('alpha', 'alpha.img', { overlayDir })]);
  t.equal(statSync(overlayDir).mode & 0o777, 0o700, 'made with mode 0700');
  t.strictSame(readdirSync(overlayDir), []);
  t.strictSame(l.lines, [], 'nothing to sweep, nothing said');

  // Leftovers of a dead server, then a reload that opens a new backing in the same directory.
  const stale = `eph-${dead}-1.cow`;
  writeFileSync(join(overlayDir, stale), 'x');
  await exports.reload([l.config('alpha', 'beta.img', { overlayDir })]);
  t.ok(existsSync(join(overlayDir, stale)), 'a directory is swept once per process, not at each reload');

  // A new ConfiguredExports (a new start) sweeps it.
  const live = `eph-${process.ppid}-1.cow`;
  writeFileSync(join(overlayDir, live), 'x');
  writeFileSync(join(overlayDir, 'named-alpha@keep.cow'), 'x');
  await l.open([l.config('alpha', 'gamma.img', { overlayDir })]);
  t.strictSame(
    readdirSync(overlayDir).sort(),
    [live, 'named-alpha@keep.cow'].sort(),
    "the dead process's overlay is removed; a live process's and named overlays are kept",
  );
  t.strictSame(l.lines, ['nbd-cow: removed 1 overlay file(s) left by a server that is gone\n']);
});

t.test('the stale overlays are swept when the directory already exists', async (t) => {
  const l = lab(t);
  const overlayDir = join(l.dir, 'existing');
  const exports0 = await l.open([l.config('alpha', 'alpha.img', { overlayDir })]);
  await exports0.close();
  const stale = [`eph-${deadPid()}-1.cow`, `eph-${deadPid()}-7.cow`];
  for (const name of stale) writeFileSync(join(overlayDir, name), 'x');
  await l.open([l.config('alpha', 'alpha.img', { overlayDir })]);
  t.strictSame(readdirSync(overlayDir), []);
});

t.test('a read-only export makes no overlay directory', async (t) => {
  const l = lab(t);
  const overlayDir = join(l.dir, 'not-made');
  const exports = await l.open([l.config('ro', 'alpha.img', { readOnly: true, overlayDir })]);
  t.notOk(existsSync(overlayDir));
  const device = await found(exports, 'ro').openDevice();
  t.equal(device.writable, false);
  await device.close();
  t.throws(() => exports.table.lookup('ro@x'), new OptionError(NBD_REP_ERR_POLICY, ''), 'and no named overlays');
});

t.test('an overlay directory that cannot be made is refused with its path and code', async (t) => {
  const l = lab(t);
  writeFileSync(join(l.dir, 'file'), 'x');
  await t.rejects(l.open([l.config('alpha', 'alpha.img', { overlayDir: join(l.dir, 'file', 'sub') })]), {
    code: 'ENOTDIR',
    message: `overlay directory ${join(l.dir, 'file', 'sub')} is not usable: ENOTDIR`,
  });
});

t.test('close() closes every base, the named overlays, and deletes throwaway overlays', async (t) => {
  const l = lab(t);
  const exports = await l.open([l.config('alpha', 'alpha.img'), l.config('beta', 'beta.img', { readOnly: true })]);
  const named = await found(exports, 'alpha@alice').openDevice();
  await named.write(0, Buffer.alloc(BLOCK, 1), W);
  await exports.close();
  for (const name of ['alpha.img', 'beta.img']) t.equal(fdsOn(l.bases[name]?.path ?? ''), 0, `${name} is closed`);
  t.strictSame(readdirSync(l.overlayDir), ['named-alpha@alice.cow'], 'the named overlay is kept, its lock released');
  await named.close();
  await exports.close();
  t.pass('close() again is harmless');
});

// A retired backing stays in the retired set until it has closed, so close() (server stop)
// closes one whose device outlived the connections' drain.

t.test('close() also closes a backing a reload retired while a device is still open on it', async (t) => {
  const l = lab(t);
  const alphaBase = l.bases['alpha.img']?.path ?? '';
  const exports = await l.open([l.config('disk', 'alpha.img')]);
  const device = await found(exports, 'disk').openDevice();
  await exports.reload([l.config('disk', 'beta.img')]);
  t.equal(fdsOn(alphaBase), 1, 'the old base is open for its device');
  await exports.close();
  t.equal(fdsOn(l.bases['beta.img']?.path ?? ''), 0, 'the current base is closed');
  t.equal(fdsOn(alphaBase), 0, 'the retired base is closed too');
  await device.close().catch(() => undefined);
  t.equal(fdsOn(alphaBase), 0, 'closed at the latest with its device');
});
