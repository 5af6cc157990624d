// The npm package: `npm pack` builds (package.json's `prepare`) and packs a copy of the working
// tree, so the dist/ other tests are running from is never rewritten under them. The tarball holds
// only what runs; `npm install -g` of it into a temporary prefix (offline, from the npm cache)
// gives an nbd-cow that prints its own version and serves a base nbdinfo reads; npx runs it too.

import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, realpathSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, symlink } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import t from 'tap';
import { makePatternBase } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { describeRun, ROOT, type RunOptions, type RunResult, run } from '../helpers/processes.js';
import { startServe } from '../helpers/server-process.js';

/** What may be packed: the compiled library and its types, the CLI, and the files npm always adds. */
const SHIPPED = /^(dist\/lib\/.+\.(js|d\.ts)|dist\/bin\/[a-z-]+\.js|package\.json|README\.md|LICENSE)$/;
// Measured on 2026-12-01: 81 files, 75.6 kB packed, 251.3 kB unpacked; 114 files, 113 kB and
// 367 kB with the security work the same day; 186 files, 189 kB and 608 kB with the overlay
// tools; 224 files, 256 kB and 834 kB with workers and remote bases (2026-12-02). The bounds
// leave the library room to grow by about a third; SHIPPED catches test/, bench/ or the source
// maps by name, the bounds anything else that arrives in bulk.
const MAX_FILES = 300;
const MAX_PACKED_BYTES = 340_000;
const MAX_UNPACKED_BYTES = 1_100_000;
/** npm pack runs tsc; npm install and npx read the npm cache. Generous on a busy 2-core host. */
const NPM_TIMEOUT_MS = 180_000;
const SIZE = 8 * 1024 * 1024 + 1536;

/**
 * npm's environment without the npm_* variables of an outer `npx tap` (its project's name and
 * version, its local prefix, its lifecycle event): only the cache and config locations stay.
 */
const NPM_ENV = Object.fromEntries(
  Object.entries(process.env).filter(
    ([k]) => !/^npm_/i.test(k) || /^npm_config_(cache|userconfig|globalconfig|registry)$/i.test(k),
  ),
);

function npm(args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  return run('npm', args, { env: NPM_ENV, timeoutMs: NPM_TIMEOUT_MS, ...options });
}

/** One entry of `npm pack --json`. */
interface Packed {
  readonly filename: string;
  readonly version: string;
  readonly size: number;
  readonly unpackedSize: number;
  readonly entryCount: number;
  readonly files: readonly { path: string; size: number; mode: number }[];
}

/**
 * The working tree as a fresh clone with everyone's uncommitted work would hold it: tracked and
 * untracked files that .gitignore does not exclude (so no dist/, node_modules/, coverage/),
 * with node_modules linked from the tree for the build.
 */
async function copyWorkingTree(dest: string): Promise<void> {
  const r = await run('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard']);
  if (r.code !== 0) throw new Error(`git ls-files: ${describeRun(r)}`);
  for (const path of r.stdout.split('\0')) {
    // A tracked file deleted in the working tree is listed but gone.
    if (path === '' || !existsSync(join(ROOT, path))) continue;
    mkdirSync(dirname(join(dest, path)), { recursive: true });
    copyFileSync(join(ROOT, path), join(dest, path));
  }
  await symlink(join(ROOT, 'node_modules'), join(dest, 'node_modules'));
}

/** The module paths of the library's sources (lib/**.ts), as their compiled dist/lib/**.js. */
function compiledLibrary(tree: string): string[] {
  return readdirSync(join(tree, 'lib'), { recursive: true, encoding: 'utf8' })
    .filter((p) => p.endsWith('.ts') && !p.endsWith('.d.ts'))
    .map((p) => `dist/lib/${p.replace(/\.ts$/, '.js')}`)
    .sort();
}

/** Remove the npx cache entries (`$npm_cache/_npx/HASH`) that npx made for `tarball`. */
async function removeNpxEntries(tarball: string): Promise<void> {
  const cache = (await npm(['config', 'get', 'cache'])).stdout.trim();
  if (cache === '') return;
  const root = join(cache, '_npx');
  for (const entry of await readdir(root).catch(() => [])) {
    const manifest = await readFile(join(root, entry, 'package.json'), 'utf8').catch(() => '{}');
    const packages = (JSON.parse(manifest) as { _npx?: { packages?: string[] } })._npx?.packages ?? [];
    if (packages.includes(tarball)) await rm(join(root, entry), { recursive: true, force: true });
  }
}

if (requireClients(t, ['git'])) {
  const work = await mkdtemp(join(tmpdir(), 'nbd-cow-npm-package-'));
  t.teardown(() => rm(work, { recursive: true, force: true }));
  const tree = join(work, 'tree');
  const prefix = join(work, 'prefix');
  const installed = join(prefix, 'bin', 'nbd-cow');
  let packed: Packed | undefined;
  let tarball = '';

  t.test('npm pack holds the compiled library, its types and the CLI, and nothing else', async (t) => {
    await copyWorkingTree(tree);
    const r = await npm(['pack', '--json', '--pack-destination', work], { cwd: tree });
    t.equal(r.code, 0, describeRun(r));
    packed = (JSON.parse(r.stdout) as Packed[])[0];
    if (packed === undefined) {
      t.fail(`npm pack printed no package: ${r.stdout}`);
      return;
    }
    tarball = join(work, packed.filename);
    const paths = packed.files.map((f) => f.path);
    t.same(
      paths.filter((p) => !SHIPPED.test(p)),
      [],
      'no sources, maps, tests, benchmarks, fixtures, docs or CI files',
    );
    t.same(
      paths.filter((p) => p.startsWith('dist/lib/') && p.endsWith('.js')).sort(),
      compiledLibrary(tree),
      'every library module, compiled, and no output of a deleted source',
    );
    const pkg = JSON.parse(readFileSync(join(tree, 'package.json'), 'utf8')) as {
      main: string;
      types: string;
      bin: Record<string, string>;
      exports: Record<string, Record<string, string>>;
    };
    const targets = [pkg.main, pkg.types, ...Object.values(pkg.bin), ...Object.values(pkg.exports['.'] ?? {})];
    for (const target of new Set(targets.map((p) => p.replace(/^\.\//, '')))) {
      t.ok(paths.includes(target), `${target} (named in package.json) is packed`);
    }
    t.equal(packed.files.find((f) => f.path === 'dist/bin/nbd-cow.js')?.mode, 0o755, 'the CLI is executable');
    t.ok(packed.entryCount <= MAX_FILES, `${packed.entryCount} files ≤ ${MAX_FILES}`);
    t.ok(packed.size <= MAX_PACKED_BYTES, `${packed.size} bytes packed ≤ ${MAX_PACKED_BYTES}`);
    t.ok(packed.unpackedSize <= MAX_UNPACKED_BYTES, `${packed.unpackedSize} bytes unpacked ≤ ${MAX_UNPACKED_BYTES}`);
    t.comment(`packed: ${packed.entryCount} files, ${packed.size} bytes, ${packed.unpackedSize} unpacked`);
  });

  t.test('npm install -g installs nbd-cow with its runtime dependencies and none of its development ones', async (t) => {
    if (packed === undefined) {
      t.fail('no tarball (npm pack failed)');
      return;
    }
    const r = await npm(['install', '-g', '--prefix', prefix, '--prefer-offline', '--no-audit', '--no-fund', tarball]);
    t.equal(r.code, 0, describeRun(r));
    t.ok(realpathSync(installed).startsWith(realpathSync(prefix)), `${installed} runs the installed copy`);
    const pkg = JSON.parse(readFileSync(join(tree, 'package.json'), 'utf8')) as {
      dependencies: Record<string, string>;
      devDependencies: Record<string, string>;
    };
    const modules = join(prefix, 'lib', 'node_modules', 'nbd-cow', 'node_modules');
    for (const name of Object.keys(pkg.dependencies)) {
      t.ok(existsSync(join(modules, name, 'package.json')), `runtime dependency ${name} is installed`);
    }
    for (const name of Object.keys(pkg.devDependencies)) {
      t.notOk(existsSync(join(modules, name)), `development dependency ${name} is not installed`);
    }
  });

  t.test('the installed nbd-cow prints its version with --version and -V', async (t) => {
    if (packed === undefined) {
      t.fail('no tarball (npm pack failed)');
      return;
    }
    for (const flag of ['--version', '-V']) {
      const r = await run(installed, [flag], { cwd: work });
      t.equal(r.code, 0, describeRun(r));
      t.equal(r.stdout, `${packed.version}\n`, `${flag} prints ${packed.version}`);
    }
  });

  t.test('the installed nbd-cow serves a base that nbdinfo reads', async (t) => {
    if (!requireClients(t, ['nbdinfo'])) return;
    const dir = t.testdir();
    const base = await makePatternBase(dir, SIZE);
    const server = await startServe(t, base, ['--overlay-dir', join(dir, 'overlays')], installed);
    const cmdline = readFileSync(`/proc/${server.pid}/cmdline`, 'utf8').split('\0');
    t.ok(cmdline.includes(installed), `the server is the installed nbd-cow: ${cmdline.join(' ')}`);
    const r = await run('nbdinfo', ['--size', server.uri]);
    t.equal(r.code, 0, describeRun(r));
    t.equal(r.stdout.trim(), String(SIZE), 'nbdinfo --size is the base size');
    const status = await server.stop();
    t.same(status, { code: 0, signal: null }, 'SIGTERM stops it with exit 0');
  });

  t.test('npx --package TARBALL nbd-cow --version', async (t) => {
    if (packed === undefined) {
      t.fail('no tarball (npm pack failed)');
      return;
    }
    const cwd = join(work, 'npx');
    mkdirSync(cwd);
    t.teardown(() => removeNpxEntries(tarball));
    const r = await run('npx', ['--yes', '--prefer-offline', '--package', tarball, 'nbd-cow', '--version'], {
      cwd,
      env: NPM_ENV,
      timeoutMs: NPM_TIMEOUT_MS,
    });
    t.equal(r.code, 0, describeRun(r));
    t.equal(r.stdout, `${packed.version}\n`);
  });
}
