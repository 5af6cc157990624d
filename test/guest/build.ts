// Builds the tiny test guest: a Debian kernel and an initramfs (busybox, the host's nbd-client
// with its libraries, the virtio/ext4/nbd modules, and init.sh as /init). Nothing is installed
// on the host: the kernel package is fetched with `apt-get download` and unpacked with
// `dpkg-deb -x` into a scratch directory.
//
// The result is cached in .cache/guest/<kernel package>_<version>-<hash>/ (hash of init.sh,
// this builder's recipe and the copied host binaries), so only the first run pays the build.
// Concurrent test files share one build through a lock file.

import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  closeSync,
  existsSync,
  lstatSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  realpathSync,
  renameSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { join, relative } from 'node:path';
import { gunzipSync } from 'node:zlib';
import { run } from '../helpers/processes.js';
import { Cpio } from './cpio.js';
import { findTool, log, ROOT } from './tools.js';

/** Bump when the recipe below (or cpio.ts's output) changes in a way the hash would not see. */
const RECIPE = 5;

/**
 * Modules the guest loads (their dependencies are added from each module's depends=).
 * virtio_rng: with `-device virtio-rng-pci` (guest.ts gives it to the TLS boots) the kernel's
 * CRNG is ready at once; without it nbd-client's GnuTLS waited 1.2-2.5 s in getrandom() for
 * "random: crng init done" (TCG has no RDRAND for the default CPU), inside the server's
 * handshake deadline.
 */
const WANTED_MODULES = ['virtio_pci', 'virtio_blk', 'virtio_net', 'virtio_rng', 'crc32c_generic', 'ext4', 'nbd'];
/** Parameters for insmod. */
const MODULE_PARAMS: Record<string, string> = { nbd: 'nbds_max=2' };

export const INIT_SCRIPT = join(ROOT, 'test', 'guest', 'init.sh');

export interface Guest {
  readonly kernel: string;
  readonly initrd: string;
  readonly dir: string;
  /** e.g. linux-image-6.1.0-56-amd64_6.1.192-2 */
  readonly kernelPackage: string;
  /** True when this call built it (not found in the cache). */
  readonly built: boolean;
  readonly buildMs: number;
}

export function cacheRoot(): string {
  return process.env['NBD_COW_GUEST_CACHE'] ?? join(ROOT, '.cache', 'guest');
}

// ---------------------------------------------------------------------------------------------
// Small process helper

interface Exec {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** run() (test/helpers/processes.ts) with a 5-minute default, a timeout noted on stderr. */
async function exec(
  cmd: string,
  args: readonly string[],
  opts: { cwd?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<Exec> {
  const timeoutMs = opts.timeoutMs ?? 300_000;
  const r = await run(cmd, args, { ...opts, timeoutMs });
  return { code: r.code, stdout: r.stdout, stderr: r.timedOut ? `${r.stderr}\n[killed after ${timeoutMs} ms]` : r.stderr };
}

async function mustExec(
  cmd: string,
  args: readonly string[],
  opts: { cwd?: string; timeoutMs?: number; env?: NodeJS.ProcessEnv } = {},
): Promise<string> {
  const r = await exec(cmd, args, opts);
  if (r.code !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} failed (exit ${r.code}): ${r.stderr.trim().slice(-2000)}`);
  }
  return r.stdout;
}

// ---------------------------------------------------------------------------------------------
// Which kernel

const APT_ENV = { ...process.env, LC_ALL: 'C', DEBIAN_FRONTEND: 'noninteractive' };

/** Name and version of the kernel package that linux-image-amd64 points to (from apt's lists). */
async function resolveKernelPackage(): Promise<{ name: string; version: string } | undefined> {
  const show = async (pkg: string): Promise<string | undefined> => {
    const r = await exec('apt-cache', ['show', '--no-all-versions', pkg], { env: APT_ENV, timeoutMs: 60_000 });
    return r.code === 0 && r.stdout.trim() !== '' ? r.stdout : undefined;
  };
  const meta = await show('linux-image-amd64');
  const dep = meta?.match(/^Depends:.*?\b(linux-image-[0-9][^\s,]*-amd64)\b/m)?.[1];
  if (dep === undefined) return undefined;
  const real = await show(dep);
  const version = real?.match(/^Version:\s*(\S+)/m)?.[1];
  return version === undefined ? undefined : { name: dep, version };
}

async function aptUpdate(): Promise<void> {
  if (process.getuid?.() !== 0) throw new Error('apt lists are missing or stale and this is not root: run `apt-get update`');
  log('guest build: apt-get update');
  await mustExec('apt-get', ['update', '-q'], { env: APT_ENV, timeoutMs: 300_000 });
}

// ---------------------------------------------------------------------------------------------
// Kernel modules: dependencies from each module's .modinfo section (depends=...), since the
// package ships no modules.dep (depmod makes it when the package is installed).

function elfSection(elf: Buffer, name: string): Buffer | undefined {
  if (elf.readUInt32BE(0) !== 0x7f454c46 || elf[4] !== 2) throw new Error('not an ELF64 file');
  const shoff = Number(elf.readBigUInt64LE(0x28));
  const shentsize = elf.readUInt16LE(0x3a);
  const shnum = elf.readUInt16LE(0x3c);
  const shstrndx = elf.readUInt16LE(0x3e);
  const header = (i: number) => {
    const at = shoff + i * shentsize;
    return {
      name: elf.readUInt32LE(at),
      offset: Number(elf.readBigUInt64LE(at + 0x18)),
      size: Number(elf.readBigUInt64LE(at + 0x20)),
    };
  };
  const strtab = header(shstrndx);
  for (let i = 0; i < shnum; i++) {
    const h = header(i);
    const start = strtab.offset + h.name;
    const end = elf.indexOf(0, start);
    if (elf.toString('latin1', start, end) === name) return elf.subarray(h.offset, h.offset + h.size);
  }
  return undefined;
}

function moduleDepends(ko: Buffer): string[] {
  const info = elfSection(ko, '.modinfo');
  if (info === undefined) return [];
  for (const entry of info.toString('latin1').split('\0')) {
    if (entry.startsWith('depends='))
      return entry
        .slice(8)
        .split(',')
        .filter((s) => s !== '');
  }
  return [];
}

const normalize = (name: string) => name.replace(/-/g, '_');

async function readModule(path: string): Promise<Buffer> {
  if (path.endsWith('.ko')) return readFileSync(path);
  if (path.endsWith('.ko.xz')) {
    // busybox insmod may not handle xz: decompress on the host.
    const xz = findTool('xz');
    if (xz === undefined) throw new Error(`${path} is xz-compressed and xz is not installed (xz-utils)`);
    return runToBuffer(xz, ['-dc', path]);
  }
  if (path.endsWith('.ko.zst')) {
    const zstd = findTool('zstd');
    if (zstd === undefined) throw new Error(`${path} is zstd-compressed and zstd is not installed`);
    return runToBuffer(zstd, ['-dcq', path]);
  }
  if (path.endsWith('.ko.gz')) return gunzipSync(readFileSync(path));
  throw new Error(`unknown module format: ${path}`);
}

function runToBuffer(cmd: string, args: readonly string[]): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    const chunks: Buffer[] = [];
    let stderr = '';
    child.stdout.on('data', (b: Buffer) => chunks.push(b));
    child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    child.on('error', reject);
    child.on('close', (code) =>
      code === 0 ? resolve(Buffer.concat(chunks)) : reject(new Error(`${cmd} ${args.join(' ')}: exit ${code}: ${stderr}`)),
    );
  });
}

/** Index name -> path of every module under dir. */
function indexModules(dir: string): Map<string, string> {
  const out = new Map<string, string>();
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) walk(p);
      else {
        const m = e.name.match(/^(.*)\.ko(\.xz|\.zst|\.gz)?$/);
        if (m?.[1] !== undefined) out.set(normalize(m[1]), p);
      }
    }
  };
  walk(dir);
  return out;
}

/** The wanted modules and their dependencies, dependencies first, with their (decompressed) bytes. */
async function collectModules(modulesDir: string): Promise<Array<{ name: string; bytes: Buffer }>> {
  const index = indexModules(modulesDir);
  const builtin = new Set(
    existsSync(join(modulesDir, 'modules.builtin'))
      ? readFileSync(join(modulesDir, 'modules.builtin'), 'utf8')
          .split('\n')
          .map((l) => normalize(l.replace(/^.*\//, '').replace(/\.ko$/, '')))
      : [],
  );
  const ordered: Array<{ name: string; bytes: Buffer }> = [];
  const state = new Map<string, 'visiting' | 'done'>();
  const visit = async (name: string): Promise<void> => {
    if (state.get(name) === 'done') return;
    if (state.get(name) === 'visiting') throw new Error(`module dependency cycle at ${name}`);
    const path = index.get(name);
    if (path === undefined) {
      if (builtin.has(name)) {
        state.set(name, 'done');
        return;
      }
      throw new Error(`module ${name} is neither in the package nor built in`);
    }
    state.set(name, 'visiting');
    const bytes = await readModule(path);
    for (const dep of moduleDepends(bytes)) await visit(normalize(dep));
    state.set(name, 'done');
    ordered.push({ name, bytes });
  };
  for (const m of WANTED_MODULES) await visit(normalize(m));
  return ordered;
}

// ---------------------------------------------------------------------------------------------
// Host binaries and their libraries (ldd)
//
// This covers nbd-client's TLS (nbd-client-tls.test.ts): ldd lists libgnutls and everything it
// needs (p11-kit, nettle, hogweed, gmp, tasn1, idn2, unistring, ffi). Under strace (2026-12-01,
// `nbd-client -l … -enable-tls`), GnuTLS 3.7.9 opens no other file at run time than the PEM
// files it is given and /etc/gnutls/config, which is optional and absent on Debian, and loads
// no library by dlopen; its getrandom() waits for the guest kernel's CRNG, ready in time.

async function sharedLibraries(binary: string): Promise<string[]> {
  const r = await exec('ldd', [binary], { timeoutMs: 30_000 });
  if (r.code !== 0) {
    if (/not a dynamic executable|statically linked/.test(r.stdout + r.stderr)) return [];
    throw new Error(`ldd ${binary}: ${r.stderr}`);
  }
  const libs: string[] = [];
  for (const line of r.stdout.split('\n')) {
    const m = line.match(/=>\s*(\/\S+)/) ?? line.match(/^\s*(\/\S+)\s+\(/);
    if (m?.[1] !== undefined) libs.push(m[1]);
  }
  return libs;
}

// ---------------------------------------------------------------------------------------------
// The build

interface HostBinaries {
  busybox: string;
  nbdClient: string;
}

function hostBinaries(): HostBinaries {
  const busybox = findTool('busybox');
  const nbdClient = findTool('nbd-client');
  if (busybox === undefined) throw new Error('busybox is not installed (Debian package busybox-static)');
  if (nbdClient === undefined) throw new Error('nbd-client is not installed (Debian package nbd-client)');
  return { busybox: realpathSync(busybox), nbdClient: realpathSync(nbdClient) };
}

/** Hash of everything that goes into the initramfs besides the kernel package. */
function recipeHash(bins: HostBinaries): string {
  const h = createHash('sha256');
  h.update(`recipe ${RECIPE}\n${WANTED_MODULES.join(',')}\n${JSON.stringify(MODULE_PARAMS)}\n`);
  h.update(readFileSync(INIT_SCRIPT));
  h.update(readFileSync(bins.busybox));
  h.update(readFileSync(bins.nbdClient));
  return h.digest('hex').slice(0, 16);
}

async function buildInto(dir: string, pkg: { name: string; version: string }, bins: HostBinaries): Promise<void> {
  const scratch = join(dir, 'scratch');
  mkdirSync(scratch, { recursive: true });
  let r = await exec('apt-get', ['download', `${pkg.name}=${pkg.version}`], { cwd: scratch, env: APT_ENV, timeoutMs: 300_000 });
  if (r.code !== 0) {
    // Stale lists (the version left the mirror): refresh and try the current one.
    log(`guest build: apt-get download failed (${r.stderr.trim().split('\n').pop() ?? ''}); updating lists`);
    await aptUpdate();
    r = await exec('apt-get', ['download', pkg.name], { cwd: scratch, env: APT_ENV, timeoutMs: 300_000 });
    if (r.code !== 0) throw new Error(`apt-get download ${pkg.name} failed: ${r.stderr.trim().slice(-2000)}`);
  }
  const deb = readdirSync(scratch).find((f) => f.endsWith('.deb'));
  if (deb === undefined) throw new Error('apt-get download left no .deb');
  const root = join(scratch, 'root');
  await mustExec('dpkg-deb', ['-x', deb, root], { cwd: scratch, timeoutMs: 300_000 });

  const bootDir = join(root, 'boot');
  const vmlinuz = readdirSync(bootDir).find((f) => f.startsWith('vmlinuz-'));
  if (vmlinuz === undefined) throw new Error('no vmlinuz in the kernel package');
  const kver = vmlinuz.slice('vmlinuz-'.length);
  let modulesDir = join(root, 'lib', 'modules', kver);
  if (!existsSync(modulesDir)) modulesDir = join(root, 'usr', 'lib', 'modules', kver);
  if (!existsSync(modulesDir)) throw new Error(`no modules directory for ${kver}`);

  const modules = await collectModules(modulesDir);
  const cpio = new Cpio();
  for (const d of ['bin', 'sbin', 'dev', 'proc', 'sys', 'mnt', 'tmp', 'lib/modules', 'lib/x86_64-linux-gnu', 'lib64'])
    cpio.dir(d);
  cpio.charDevice('dev/console', 5, 1);
  cpio.charDevice('dev/null', 1, 3, 0o666);
  cpio.file('init', readFileSync(INIT_SCRIPT), 0o755);
  cpio.file('bin/busybox', readFileSync(bins.busybox), 0o755);
  cpio.symlink('bin/sh', 'busybox');
  cpio.file('sbin/nbd-client', readFileSync(bins.nbdClient), 0o755);
  const libs = new Set<string>();
  for (const bin of [bins.busybox, bins.nbdClient]) for (const lib of await sharedLibraries(bin)) libs.add(lib);
  for (const lib of libs) cpio.file(lib, readFileSync(realpathSync(lib)), 0o755);
  const order: string[] = [];
  for (const m of modules) {
    cpio.file(`lib/modules/${m.name}.ko`, m.bytes);
    order.push(`${m.name}.ko${MODULE_PARAMS[m.name] !== undefined ? ` ${MODULE_PARAMS[m.name]}` : ''}`);
  }
  cpio.file('lib/modules/order', Buffer.from(`${order.join('\n')}\n`));

  // The ELF vmlinux boots by PVH straight into the kernel: under TCG that saves the ~5 s the
  // bzImage spends decompressing itself. The bzImage stays as the fallback.
  const bzImage = join(bootDir, vmlinuz);
  const config = join(bootDir, `config-${kver}`);
  const pvh = existsSync(config) && /^CONFIG_PVH=y$/m.test(readFileSync(config, 'utf8'));
  const elf = pvh ? await extractVmlinux(bzImage) : undefined;
  if (elf !== undefined) writeFileSync(join(dir, 'vmlinux'), elf);
  else renameSync(bzImage, join(dir, 'vmlinux'));
  // Uncompressed: the kernel only copies it (gunzip under TCG costs ~0.7 s a boot).
  writeFileSync(join(dir, 'initramfs.cpio'), cpio.finish());
  writeFileSync(
    join(dir, 'manifest.json'),
    `${JSON.stringify(
      {
        kernelPackage: `${pkg.name}_${pkg.version}`,
        kernelRelease: kver,
        kernel: elf !== undefined ? 'vmlinux (ELF, PVH boot)' : 'bzImage',
        modules: order,
        libraries: [...libs],
        busybox: bins.busybox,
        nbdClient: bins.nbdClient,
      },
      null,
      2,
    )}\n`,
  );
  rmSync(scratch, { recursive: true, force: true });
}

/** The ELF kernel inside a bzImage (what scripts/extract-vmlinux does), or undefined. */
async function extractVmlinux(bzImage: string): Promise<Buffer | undefined> {
  const image = readFileSync(bzImage);
  const isElf = (b: Buffer) => b.length > 64 && b.readUInt32BE(0) === 0x7f454c46;
  const xzAt = image.indexOf(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]));
  const xz = findTool('xz');
  if (xzAt >= 0 && xz !== undefined) {
    const scratch = `${bzImage}.xz`;
    writeFileSync(scratch, image.subarray(xzAt));
    try {
      const out = await runToBuffer(xz, ['-dc', '--single-stream', scratch]);
      if (isElf(out)) return out;
    } catch {
      // not a clean xz stream: fall back to the bzImage
    } finally {
      rmSync(scratch, { force: true });
    }
  }
  const gzAt = image.indexOf(Buffer.from([0x1f, 0x8b, 0x08]));
  if (gzAt >= 0) {
    try {
      const out = gunzipSync(image.subarray(gzAt));
      if (isElf(out)) return out;
    } catch {
      // fall back to the bzImage
    }
  }
  return undefined;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Take the build lock for `key`, waiting while another live process holds it. */
async function lock(root: string, key: string, done: () => boolean, timeoutMs: number): Promise<(() => void) | undefined> {
  const path = join(root, `${key}.lock`);
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (done()) return undefined;
    try {
      const fd = openSync(path, 'wx');
      writeSync(fd, String(process.pid));
      closeSync(fd);
      return () => rmSync(path, { force: true });
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
    }
    let holder = NaN;
    try {
      holder = Number(readFileSync(path, 'utf8'));
    } catch {
      continue; // just released
    }
    if (Number.isInteger(holder) && holder > 0 && !pidAlive(holder)) {
      rmSync(path, { force: true }); // stale: its builder died
      continue;
    }
    if (Date.now() > deadline) throw new Error(`waited ${timeoutMs} ms for the guest build lock ${path} (held by pid ${holder})`);
    await sleep(500);
  }
}

/** Get the guest from the cache, building it first if needed. */
export async function ensureGuest(timeoutMs = 480_000): Promise<Guest> {
  const started = Date.now();
  const root = cacheRoot();
  mkdirSync(root, { recursive: true });
  const bins = hostBinaries();
  const hash = recipeHash(bins);

  let pkg = await resolveKernelPackage();
  if (pkg === undefined) {
    // No apt lists. A kernel already cached with this recipe will do; otherwise update them.
    const cached = readdirSync(root)
      .filter((d) => d.endsWith(`-${hash}`) && existsSync(join(root, d, 'initramfs.cpio')))
      .sort();
    const last = cached[cached.length - 1];
    if (last !== undefined) return guestAt(join(root, last), last.slice(0, -hash.length - 1), false, started);
    await aptUpdate();
    pkg = await resolveKernelPackage();
    if (pkg === undefined) throw new Error('apt cannot find linux-image-amd64 (is this Debian amd64?)');
  }
  const kernelPackage = `${pkg.name}_${pkg.version}`;
  const key = `${kernelPackage}-${hash}`;
  const dir = join(root, key);
  const ready = () => existsSync(join(dir, 'initramfs.cpio')) && existsSync(join(dir, 'vmlinux'));

  const release = await lock(root, key, ready, timeoutMs);
  if (release === undefined) return guestAt(dir, kernelPackage, false, started);
  try {
    if (ready()) return guestAt(dir, kernelPackage, false, started);
    const tmp = join(root, `${key}.tmp-${process.pid}`);
    rmSync(tmp, { recursive: true, force: true });
    log(`guest build: ${kernelPackage} into ${relative(ROOT, dir)}`);
    try {
      await buildInto(tmp, pkg, bins);
      rmSync(dir, { recursive: true, force: true });
      renameSync(tmp, dir);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
    pruneOthers(root, key);
    const guest = guestAt(dir, kernelPackage, true, started);
    log(`guest build: done in ${guest.buildMs} ms`);
    return guest;
  } finally {
    release();
  }
}

/**
 * Remove other cached builds (older kernels or recipes) unused for a day, and leftovers of dead
 * builders. (A run of other code may be using another build right now: hence the day.)
 */
function pruneOthers(root: string, keep: string): void {
  for (const name of readdirSync(root)) {
    if (name === keep || name.endsWith('.lock') || name === 'failed-boots') continue;
    const tmp = name.match(/\.tmp-(\d+)$/);
    if (tmp?.[1] !== undefined && pidAlive(Number(tmp[1]))) continue;
    const p = join(root, name);
    const stat = lstatSync(p);
    if (!stat.isDirectory()) continue;
    if (tmp !== null || (existsSync(join(p, 'manifest.json')) && Date.now() - stat.mtimeMs > 86_400_000)) {
      rmSync(p, { recursive: true, force: true });
    }
  }
}

function guestAt(dir: string, kernelPackage: string, built: boolean, started: number): Guest {
  const kernel = join(dir, 'vmlinux');
  const initrd = join(dir, 'initramfs.cpio');
  statSync(kernel);
  statSync(initrd);
  const now = new Date();
  utimesSync(dir, now, now); // last used, for pruneOthers
  return { kernel, initrd, dir, kernelPackage, built, buildMs: Date.now() - started };
}
