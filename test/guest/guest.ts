// Real-guest helpers: the ext4 base image, the nbd-cow server process, and booting the test
// guest (build.ts) under QEMU against it, with a hard timeout per boot and the console kept.
//
// Every process started here is killed by its own pid: at its timeout and in t.teardown.

import { type ChildProcess, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import {
  closeSync,
  existsSync,
  constants as fsConstants,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { Test } from 'tap';
import { sha256, sha256File } from '../helpers/bases.js';
import { waitForDir } from '../helpers/files.js';
import { pidOf, run } from '../helpers/processes.js';
import type { ClientCertificates } from '../helpers/tls-fixtures.js';
import { cacheRoot, ensureGuest, type Guest } from './build.js';
import { Cpio } from './cpio.js';
import { findTool, log, ROOT, tool } from './tools.js';

const CLI = join(ROOT, 'dist', 'bin', 'nbd-cow.js');

/** One boot may take this long before QEMU is killed (TCG boots take ~10 s). */
export const BOOT_TIMEOUT_MS = Number(process.env['NBD_COW_GUEST_BOOT_TIMEOUT_MS'] ?? 60_000);
/** The guestfwd address and port the guest's nbd-client connects to. */
export const GUEST_NBD_ADDR = '10.0.2.100';
export const GUEST_NBD_PORT = 10809;

// The tests import sha256File from here with the rest of the guest helpers.
export { sha256File };

interface Exited {
  code: number | null;
  signal: NodeJS.Signals | null;
}

function exitedPromise(child: ChildProcess): Promise<Exited> {
  return new Promise((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) resolve({ code: child.exitCode, signal: child.signalCode });
    else child.once('exit', (code, signal) => resolve({ code, signal }));
  });
}

/** SIGTERM the child's pid, SIGKILL it after `graceMs`; resolves once it has exited. */
async function terminate(child: ChildProcess, exited: Promise<Exited>, graceMs = 5_000): Promise<Exited> {
  if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
    try {
      process.kill(child.pid, 'SIGTERM');
    } catch {
      // already gone
    }
    const killer = setTimeout(() => {
      if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
        try {
          process.kill(child.pid, 'SIGKILL');
        } catch {
          // already gone
        }
      }
    }, graceMs);
    const status = await exited;
    clearTimeout(killer);
    return status;
  }
  return exited;
}

/**
 * The command line that runs `argv` so that it cannot outlive this process: `setpriv
 * --pdeathsig SIGTERM` (util-linux) signals it when this process dies, even by SIGKILL (as
 * when tap's file timeout kills a test), and `timeout` (coreutils) ends it after `limitS`
 * seconds whatever happens. Both exec, so the pid is setpriv's = timeout's, and timeout passes
 * SIGTERM on to the command. Either wrapper is left out when it is not installed.
 */
export function contained(argv: readonly string[], limitS?: number): [string, string[]] {
  const wrappers: string[] = [];
  const setpriv = findTool('setpriv');
  if (setpriv !== undefined) wrappers.push(setpriv, '--pdeathsig', 'SIGTERM', '--');
  const timeoutBin = findTool('timeout');
  if (limitS !== undefined && timeoutBin !== undefined) wrappers.push(timeoutBin, '-k', '5', `${Math.ceil(limitS)}s`);
  const [program, ...args] = [...wrappers, ...argv];
  if (program === undefined) throw new Error('contained: empty command line');
  return [program, args];
}

// ---------------------------------------------------------------------------------------------
// The base image

export interface BaseImage {
  readonly path: string;
  readonly size: number;
  /** sha256 of the image file itself. */
  readonly sha256: string;
  /** sha256 of the known files inside it. */
  readonly helloSha256: string;
  readonly dataSha256: string;
}

export const BASE_SIZE = 32 * 1024 * 1024;

/** Deterministic bytes: sha256 in counter mode. */
function knownBytes(size: number, seed: string): Buffer {
  const out = Buffer.alloc(size);
  for (let pos = 0, i = 0; pos < size; pos += 32, i++) sha256Buf(`${seed}:${i}`).copy(out, pos);
  return out;
}
function sha256Buf(s: string): Buffer {
  return createHash('sha256').update(s).digest();
}

/** A small ext4 filesystem with known files, made without mounting anything (mkfs.ext4 -d). */
export async function makeBaseImage(dir: string, name = 'base.img'): Promise<BaseImage> {
  const src = join(dir, 'base-content');
  mkdirSync(src, { recursive: true });
  const hello = Buffer.from('hello from the nbd-cow base image\n');
  const data = knownBytes(4 * 1024 * 1024 + 123, 'nbd-cow guest data');
  writeFileSync(join(src, 'hello.txt'), hello);
  writeFileSync(join(src, 'data.bin'), data);
  const path = join(dir, name);
  const r = await run(tool('mkfs.ext4'), ['-q', '-F', '-L', 'nbdcow', '-b', '4096', '-d', src, path, `${BASE_SIZE / 1024}k`], {
    timeoutMs: 60_000,
  });
  if (r.code !== 0) throw new Error(`mkfs.ext4 failed (${r.code}): ${r.stdout}${r.stderr}`);
  return { path, size: BASE_SIZE, sha256: await sha256File(path), helloSha256: sha256(hello), dataSha256: sha256(data) };
}

// ---------------------------------------------------------------------------------------------
// The server

export interface Server {
  readonly uri: string;
  /** TCP port (undefined for a unix socket). */
  readonly port: number | undefined;
  readonly pid: number;
  /** Everything it wrote on stderr so far. */
  log(): string;
  running(): boolean;
  stop(): Promise<Exited>;
}

export interface ServerOptions {
  /** Listen on this unix socket instead of TCP port 0. */
  readonly socket?: string;
  readonly exportName?: string;
  readonly overlayDir: string;
  /** More `serve` options, e.g. `--tls require --tls-certificates DIR`. */
  readonly serveArgs?: readonly string[];
}

/** `nbd-cow serve BASE …` (verbose), once it has printed its URI; stopped in t.teardown. */
export async function startServer(t: Test, base: string, opts: ServerOptions): Promise<Server> {
  // QEMU's `tcp:` chardev forwarding connects to the server as QEMU starts, long before the
  // guest's nbd-client speaks: under TCG on a loaded host that can pass the default 10 s
  // handshake deadline. A real client handshakes at once; the guest boots get a boot's time.
  const args = ['serve', base, '-v', '--overlay-dir', opts.overlayDir, '--handshake-timeout', '120'];
  if (opts.socket !== undefined) args.push('-k', opts.socket);
  else args.push('-b', '127.0.0.1', '-p', '0');
  if (opts.exportName !== undefined) args.push('-x', opts.exportName);
  if (opts.serveArgs !== undefined) args.push(...opts.serveArgs);
  // dist/bin/nbd-cow.js runs through its shebang (env execs node), and setpriv execs it: the pid is the server's own.
  const [cmd, argv] = contained([CLI, ...args]);
  const child = spawn(cmd, argv, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const exited = exitedPromise(child);
  // Safety net: no server outlives the suite.
  const safety = setTimeout(() => void terminate(child, exited), 600_000);
  void exited.then(() => clearTimeout(safety));
  const stop = () => terminate(child, exited, 15_000);
  t.teardown(async () => {
    await stop();
  });

  const uri = await new Promise<string>((resolve, reject) => {
    const lines = createInterface({ input: child.stdout });
    const timer = setTimeout(() => reject(new Error(`nbd-cow printed no URI in 30 s; stderr: ${stderr}`)), 30_000);
    lines.once('line', (line) => {
      clearTimeout(timer);
      resolve(line.trim());
    });
    void exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`nbd-cow exited (${code ?? signal}) before printing its URI; stderr: ${stderr}`));
    });
  });
  const port = uri.match(/^nbds?:\/\/127\.0\.0\.1:(\d+)\//)?.[1];
  return {
    uri,
    port: port === undefined ? undefined : Number(port),
    pid: pidOf(child),
    log: () => stderr,
    running: () => child.exitCode === null && child.signalCode === null,
    stop,
  };
}

/** A kept overlay after its server stopped: `nbd-cow overlay check FILE --base BASE` exits 0 (clean). */
export async function checkOverlayClean(t: Test, file: string, base: BaseImage): Promise<void> {
  const check = await run(CLI, ['overlay', 'check', file, '--base', base.path], { timeoutMs: 60_000 });
  const output = `${check.stdout}${check.stderr}`;
  t.equal(check.code, 0, `nbd-cow overlay check: the kept overlay is clean (${output.trim().replace(/\n/g, '; ')})`);
}

/** A short private directory for unix sockets (sun_path is 108 bytes); removed in teardown. */
export async function socketDir(t: Test): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'nbdcow-guest-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return dir;
}

// ---------------------------------------------------------------------------------------------
// Accelerator

export interface Accel {
  readonly accel: 'kvm' | 'tcg';
  /** Extra QEMU arguments for it. */
  readonly args: readonly string[];
  readonly why: string;
}

let accelCache: Promise<Accel> | undefined;
const TCG: Omit<Accel, 'why'> = { accel: 'tcg', args: ['-accel', 'tcg'] };
const KVM: Omit<Accel, 'why'> = { accel: 'kvm', args: ['-accel', 'kvm', '-cpu', 'max'] };

/**
 * KVM only when /dev/kvm opens and the guest really boots with it: a probe boot (init prints
 * done=ok and powers off at once) within 20 s. On these machines /dev/kvm opens and QEMU even
 * starts a KVM machine, but guests hang after the BIOS (default CPU) or QEMU aborts setting
 * MSRs (-cpu max/host), so only a real boot tells. TCG otherwise.
 * NBD_COW_GUEST_ACCEL=kvm|tcg skips the detection.
 */
export function detectAccel(guest: Guest): Promise<Accel> {
  accelCache ??= (async (): Promise<Accel> => {
    const forced = process.env['NBD_COW_GUEST_ACCEL'];
    if (forced === 'kvm') return { ...KVM, why: 'NBD_COW_GUEST_ACCEL=kvm' };
    if (forced === 'tcg') return { ...TCG, why: 'NBD_COW_GUEST_ACCEL=tcg' };
    try {
      closeSync(openSync('/dev/kvm', fsConstants.O_RDWR));
    } catch (e) {
      return { ...TCG, why: `no KVM (/dev/kvm: ${(e as Error).message})` };
    }
    const probe = await runQemu(
      [...KVM.args, ...guestArgs(guest), '-nic', 'none', '-append', 'console=ttyS0 panic=-1 quiet nbdcow.mode=probe'],
      20_000,
    );
    if (!probe.timedOut && probe.exit.code === 0 && /NBDCOW:done=ok/.test(probe.console)) {
      return { ...KVM, why: `KVM probe boot passed in ${probe.ms} ms` };
    }
    const how = probe.timedOut ? 'hung' : `exit ${probe.exit.code ?? probe.exit.signal}`;
    const last = plain(probe.console).trim().split('\n').pop() ?? '';
    return { ...TCG, why: `KVM unusable: probe boot ${how} after ${probe.ms} ms (${last.slice(0, 200)})` };
  })();
  return accelCache;
}

function guestArgs(guest: Guest, cpus = 1, initrd = guest.initrd): string[] {
  return ['-nographic', '-no-reboot', '-m', '256', '-smp', String(cpus), '-kernel', guest.kernel, '-initrd', initrd];
}

interface QemuRun {
  readonly ms: number;
  readonly timedOut: boolean;
  readonly exit: Exited;
  readonly console: string;
}

/** Run QEMU to its end, killing it (by pid) at the timeout or in t.teardown. */
async function runQemu(args: readonly string[], timeoutMs: number, t?: Test): Promise<QemuRun> {
  const started = Date.now();
  // timeout ends QEMU 15 s after our own timer would have, should this process be stuck.
  const [cmd, argv] = contained([tool('qemu-system-x86_64'), ...args], timeoutMs / 1000 + 15);
  const child = spawn(cmd, argv, { stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = exitedPromise(child);
  t?.teardown(async () => {
    await terminate(child, exited, 2_000);
  });
  let consoleText = '';
  child.stdout.setEncoding('utf8').on('data', (s: string) => (consoleText += s));
  child.stderr.setEncoding('utf8').on('data', (s: string) => (consoleText += s));
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    void terminate(child, exited, 2_000);
  }, timeoutMs);
  const spawnError = new Promise<never>((_, reject) => child.once('error', reject));
  const exit = await Promise.race([exited, spawnError]);
  clearTimeout(timer);
  // Let the pipes drain.
  await new Promise<void>((resolve) => {
    let open = 2;
    const done = () => (--open === 0 ? resolve() : undefined);
    if (child.stdout.readableEnded) done();
    else child.stdout.once('close', done);
    if (child.stderr.readableEnded) done();
    else child.stderr.once('close', done);
    setTimeout(resolve, 2_000);
  });
  return { ms: Date.now() - started, timedOut, exit, console: consoleText };
}

// ---------------------------------------------------------------------------------------------
// Booting

interface BootCommon {
  /**
   * What the disk must hold from an earlier boot (nbdcow.prior=): `absent` (a pristine base),
   * `present` (an earlier boot's guest/written.bin and note.txt). Unset: only reported.
   */
  readonly prior?: 'absent' | 'present';
  /** Guest CPUs (-smp; default 1). blk-mq gives /dev/nbd0 one queue per connection and maps
   * CPUs to queues: with one CPU only the first of `nbd-client -C N`'s connections carries I/O. */
  readonly cpus?: number;
}

/** Credentials of QEMU's own TLS client (`-object tls-creds-…,endpoint=client`). */
export type QemuTlsCredentials =
  /** tls-creds-x509: `dir` holds ca-cert.pem, and client-cert.pem and client-key.pem to show when asked. */
  | { readonly kind: 'x509'; readonly dir: string }
  /** tls-creds-psk: `dir/keys.psk` holds `username:hexkey`. */
  | { readonly kind: 'psk'; readonly dir: string; readonly username: string };

/** TLS for the guest's nbd-client (-enable-tls): its certificates are copied into the guest. */
export interface GuestTls {
  readonly certificates: ClientCertificates;
  /** nbd-client -tlshostname: the name the server's certificate must carry. */
  readonly hostname: string;
}

/** Where the guest finds GuestTls's certificates (init.sh passes these paths to nbd-client). */
export const GUEST_TLS_DIR = '/etc/nbd-cow/tls';

export type BootTarget = BootCommon &
  /**
   * QEMU's own NBD client. Without `tls`: -drive file=URI (nbd:// or nbd+unix://). With `tls`:
   * URI is the nbds://HOST:PORT/EXPORT the server printed (QEMU 7.2 parses no nbds:// URI),
   * and the disk is -blockdev driver=nbd,…,tls-creds=… on a virtio-blk device.
   */
  (
    | { readonly mode: 'drive'; readonly uri: string; readonly tls?: QemuTlsCredentials }
    /** The guest kernel's NBD client via nbd-client, forwarded to 127.0.0.1:port. */
    | {
        readonly mode: 'client';
        readonly port: number;
        readonly exportName: string;
        /** nbd-client -C N (default 1). */
        readonly connections?: number;
        /** nbd-client must fail (the kernel refuses -C N without CAN_MULTI_CONN). */
        readonly expectRefused?: boolean;
        /**
         * Forward through `guestfwd=…-cmd:` running relay.mjs once per guest connection (which
         * appends a JSON line per connection to relayLog) instead of QEMU's `tcp:` chardev,
         * which connects once when QEMU starts and so carries one guest connection.
         */
        readonly relayLog?: string;
        /** nbd-client -enable-tls with these certificates. */
        readonly tls?: GuestTls;
      }
  );

export const RELAY_SCRIPT = join(ROOT, 'test', 'guest', 'relay.mjs');

/** What relay.mjs wrote: one entry per guest connection (by relay pid), its last event. */
export interface RelayConnection {
  readonly pid: number;
  readonly event: string;
  readonly ms: number;
  readonly toHost: number;
  readonly toGuest: number;
  readonly why?: string;
}

export function readRelayLog(path: string): RelayConnection[] {
  if (!existsSync(path)) return [];
  const last = new Map<number, RelayConnection>();
  for (const line of readFileSync(path, 'utf8').split('\n')) {
    if (line.trim() === '') continue;
    const entry = JSON.parse(line) as RelayConnection;
    last.set(entry.pid, entry);
  }
  return [...last.values()];
}

/**
 * The relay log once every relay has written its "closed" line: the relays end just after QEMU
 * (when their socket pair end sees EOF), so give them up to `timeoutMs`.
 */
export async function settledRelayLog(path: string, timeoutMs = 5_000): Promise<RelayConnection[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const conns = readRelayLog(path);
    if (conns.every((c) => c.event === 'closed') || Date.now() > deadline) return conns;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/**
 * The transmission flags of every connection the server served `exportName` on, from its -v
 * log (`conn N (…): serving export "NAME" flags 0xHEX`): its length counts the connections.
 */
export function servedFlags(serverLog: string, exportName: string): number[] {
  const needle = `: serving export ${JSON.stringify(exportName)} flags 0x`;
  return serverLog
    .split('\n')
    .filter((l) => l.includes(needle))
    .map((l) => parseInt(l.slice(l.indexOf(needle) + needle.length), 16));
}

export const servedCount = (serverLog: string, exportName: string): number => servedFlags(serverLog, exportName).length;

/** One TLS session the server set up, from its -v log (`conn N (…): TLS TLSv1.3 CIPHER, identity NAME`). */
export interface TlsSession {
  readonly protocol: string;
  readonly cipher: string;
  /** The client's TLS identity, `(none)` when it proved none. */
  readonly identity: string;
}

export function tlsSessions(serverLog: string): TlsSession[] {
  const sessions: TlsSession[] = [];
  for (const m of serverLog.matchAll(/: TLS (\S+) (\S+), identity (\S+)$/gm)) {
    const [, protocol, cipher, identity] = m;
    if (protocol !== undefined && cipher !== undefined && identity !== undefined) sessions.push({ protocol, cipher, identity });
  }
  return sessions;
}

/** NBD_FLAG_CAN_MULTI_CONN (transmission flag bit 8). */
export const FLAG_CAN_MULTI_CONN = 1 << 8;

export interface Boot {
  readonly name: string;
  readonly mode: BootTarget['mode'];
  readonly tag: string;
  readonly accel: string;
  readonly ms: number;
  readonly timedOut: boolean;
  readonly exit: Exited;
  /** The NBDCOW:key=value lines of the console, last one wins. */
  readonly markers: ReadonlyMap<string, string>;
  readonly console: string;
  readonly args: readonly string[];
}

/** QEMU option values escape a comma by doubling it. */
const qemuOpt = (s: string) => s.replace(/,/g, ',,');
/** One word for g_shell_parse_argv (POSIX shell quoting rules). */
const shellQuote = (s: string) => (/^[A-Za-z0-9_./@:=+-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);

/**
 * QEMU's NBD client over TLS: the credentials object, the nbd block node and a virtio-blk device
 * on it. QEMU checks the server's certificate against the host it connects to (the IP SAN).
 */
function tlsDriveArgs(uri: string, tls: QemuTlsCredentials): string[] {
  const url = new URL(uri);
  if (url.protocol !== 'nbds:') throw new Error(`a TLS drive needs the server's nbds:// URI, not ${uri}`);
  const creds =
    tls.kind === 'x509'
      ? `tls-creds-x509,id=tls0,dir=${qemuOpt(tls.dir)},endpoint=client`
      : `tls-creds-psk,id=tls0,dir=${qemuOpt(tls.dir)},username=${qemuOpt(tls.username)},endpoint=client`;
  const server = `server.type=inet,server.host=${url.hostname},server.port=${url.port || '10809'}`;
  const exportName = decodeURIComponent(url.pathname.slice(1));
  return [
    '-object',
    creds,
    '-blockdev',
    `driver=nbd,node-name=nbd0,${server},export=${qemuOpt(exportName)},tls-creds=tls0`,
    '-device',
    'virtio-blk-pci,drive=nbd0',
  ];
}

/** The files GuestTls puts in the guest: GUEST_TLS_DIR/{ca-cert,client-cert,client-key}.pem. */
async function guestTlsFiles(certificates: ClientCertificates): Promise<Map<string, Buffer>> {
  return new Map([
    [`${GUEST_TLS_DIR}/ca-cert.pem`, await readFile(certificates.ca)],
    [`${GUEST_TLS_DIR}/client-cert.pem`, await readFile(certificates.cert)],
    [`${GUEST_TLS_DIR}/client-key.pem`, await readFile(certificates.key)],
  ]);
}

/**
 * The cached initramfs with `files` (guest path -> bytes) appended as a second cpio archive,
 * in a private temp dir removed in t.teardown: the kernel unpacks both, so files made at test
 * time (certificates) reach the guest without rebuilding the cached one.
 */
async function initrdWith(t: Test, guest: Guest, files: ReadonlyMap<string, Buffer>): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'nbdcow-initrd-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const extra = new Cpio();
  for (const [path, bytes] of files) extra.file(path, bytes, 0o600);
  const initrd = join(dir, 'initramfs.cpio');
  await writeFile(initrd, Buffer.concat([await readFile(guest.initrd), extra.finish()]));
  return initrd;
}

export async function bootGuest(
  t: Test,
  guest: Guest,
  name: string,
  target: BootTarget,
  timeoutMs = BOOT_TIMEOUT_MS,
): Promise<Boot> {
  const accel = await detectAccel(guest);
  const tag = `${name.replace(/[^A-Za-z0-9]+/g, '-')}-${process.pid}-${Date.now() % 1e6}`;
  const append = ['console=ttyS0', 'panic=-1', 'quiet', `nbdcow.mode=${target.mode}`, `nbdcow.tag=${tag}`];
  if (target.prior !== undefined) append.push(`nbdcow.prior=${target.prior}`);
  let initrd = guest.initrd;
  const args: string[] = [];
  if (target.mode === 'drive') {
    args.push('-nic', 'none');
    if (target.tls === undefined) args.push('-drive', `file=${qemuOpt(target.uri)},format=raw,if=virtio`);
    else args.push(...tlsDriveArgs(target.uri, target.tls));
  } else {
    append.push(`nbdcow.export=${target.exportName}`);
    if (target.tls !== undefined) {
      append.push(`nbdcow.tls=${target.tls.hostname}`);
      initrd = await initrdWith(t, guest, await guestTlsFiles(target.tls.certificates));
      // Entropy for GnuTLS's getrandom(), which otherwise waits for the CRNG (build.ts).
      args.push('-device', 'virtio-rng-pci');
    }
    if (target.connections !== undefined) append.push(`nbdcow.conns=${target.connections}`);
    if (target.expectRefused === true) append.push('nbdcow.expect=refused');
    // `tcp:` is a chardev QEMU connects once, at start; `cmd:` is run (through
    // g_shell_parse_argv, no shell) for each connection the guest opens. `env -i`: the relay
    // must not inherit tap's NODE_OPTIONS loaders.
    const to =
      target.relayLog === undefined
        ? `tcp:127.0.0.1:${target.port}`
        : `cmd:${tool('env')} -i ${shellQuote(process.execPath)} ${shellQuote(RELAY_SCRIPT)} ${target.port} ${shellQuote(target.relayLog)}${process.env['NBD_COW_GUEST_RELAY_DUMP'] ? ' dump' : ''}`;
    args.push(
      '-netdev',
      `user,id=n0,restrict=on,guestfwd=${qemuOpt(`tcp:${GUEST_NBD_ADDR}:${GUEST_NBD_PORT}-${to}`)}`,
      // romfile= : no iPXE option ROM, which only costs boot time here.
      '-device',
      'virtio-net-pci,netdev=n0,romfile=',
    );
  }
  args.unshift(...accel.args, ...guestArgs(guest, target.cpus, initrd));
  args.push('-append', append.join(' '));

  const run = await runQemu(args, timeoutMs, t);
  const markers = new Map<string, string>();
  for (const raw of run.console.split('\n')) {
    const m = plain(raw).match(/NBDCOW:([A-Za-z0-9_-]+)=(\S*)\s*$/);
    if (m?.[1] !== undefined && m[2] !== undefined) markers.set(m[1], m[2]);
  }
  const boot: Boot = {
    name,
    mode: target.mode,
    tag,
    accel: accel.accel,
    ms: run.ms,
    timedOut: run.timedOut,
    exit: run.exit,
    markers,
    console: run.console,
    args,
  };
  const status = run.timedOut ? 'TIMED OUT' : `exit ${run.exit.code ?? run.exit.signal}`;
  const result = markers.get('done') === 'ok' ? 'done=ok' : `fail=${markers.get('fail') ?? '?'}`;
  const times = [...markers].filter(([k]) => k.startsWith('t-')).map(([k, v]) => `${k.slice(2)} ${v}s`);
  log(`boot ${name}: ${accel.accel}, ${run.ms} ms, ${status}, ${result}; guest uptime at ${times.join(', ')}`);
  return boot;
}

/** Console text without terminal escapes and carriage returns. */
export function plain(text: string): string {
  // biome-ignore lint/suspicious/noControlCharactersInRegex: strips the escape sequences a guest console prints
  return text.replace(/\x1b(\[[0-9;?]*[A-Za-z]|c)/g, '').replace(/\r/g, '');
}

/**
 * Keep a boot's console: in the test output and in .cache/guest/failed-boots/ (for every boot
 * when NBD_COW_GUEST_VERBOSE is set, to .cache/guest/boots/).
 */
export function reportFailedBoot(t: Test, boot: Boot, server?: Server, failed = true): void {
  const dir = join(cacheRoot(), failed ? 'failed-boots' : 'boots');
  mkdirSync(dir, { recursive: true });
  // Keep the newest 30 logs.
  const old = readdirSync(dir)
    .map((name) => ({ name, mtime: statSync(join(dir, name)).mtimeMs }))
    .sort((a, b) => b.mtime - a.mtime)
    .slice(29);
  for (const { name } of old) rmSync(join(dir, name), { force: true });
  const file = join(dir, `${boot.tag}.log`);
  const serverLog = server?.log() ?? '';
  writeFileSync(
    file,
    `qemu-system-x86_64 ${boot.args.join(' ')}\n\n===== console =====\n${plain(boot.console)}\n===== nbd-cow stderr =====\n${serverLog}\n`,
  );
  const tail = (s: string, n: number) => plain(s).split('\n').slice(-n).join('\n');
  t.comment(
    `boot ${boot.name} ${failed ? 'failed' : 'passed'} (${boot.timedOut ? `timed out after ${boot.ms} ms` : `exit ${boot.exit.code ?? boot.exit.signal}`}); full log: ${file}\n` +
      `----- console (last 80 lines) -----\n${tail(boot.console, 80)}\n` +
      `----- nbd-cow stderr (last 30 lines) -----\n${tail(serverLog, 30)}`,
  );
}

export interface Expectations {
  readonly base: BaseImage;
  /** Whether the guest must see a pristine base (nothing written by an earlier boot). */
  readonly pristine: boolean;
  /** The earlier boot whose written.bin and note.txt this guest must find (a named overlay). */
  readonly prior?: Boot;
}

/**
 * The checks every boot makes: the boot finished (done=ok, no timeout), the known files read
 * back with the base's hashes, the written file read back the same after a remount with caches
 * dropped, and (pristine) no earlier boot's write is visible. On failure the console is kept.
 */
export function checkBoot(t: Test, boot: Boot, expect: Expectations, server?: Server): boolean {
  const m = boot.markers;
  const results: boolean[] = [];
  results.push(t.notOk(boot.timedOut, `${boot.name}: the boot finished within the timeout (${boot.ms} ms)`));
  results.push(t.equal(m.get('fail'), undefined, `${boot.name}: no step failed in the guest`));
  results.push(t.equal(m.get('done'), 'ok', `${boot.name}: the guest script ran to the end`));
  results.push(t.equal(m.get('dev-sectors'), String(expect.base.size / 512), `${boot.name}: the disk has the base's size`));
  results.push(t.equal(m.get('hello-sha256'), expect.base.helloSha256, `${boot.name}: hello.txt has the base content`));
  results.push(t.equal(m.get('data-sha256'), expect.base.dataSha256, `${boot.name}: data.bin (4 MiB) has the base content`));
  if (expect.pristine)
    results.push(t.equal(m.get('prior-write'), 'absent', `${boot.name}: nothing written by an earlier boot is visible`));
  if (expect.prior !== undefined) {
    const prior = expect.prior;
    results.push(t.equal(m.get('prior-write'), 'present', `${boot.name}: the file ${prior.name} wrote is there`));
    results.push(
      t.equal(
        m.get('prior-sha256'),
        prior.markers.get('written-sha256'),
        `${boot.name}: with the content ${prior.name} wrote (sha256)`,
      ),
    );
    results.push(t.equal(m.get('prior-note'), `written-by-${prior.tag}`, `${boot.name}: and ${prior.name}'s note`));
  }
  results.push(t.match(m.get('written-sha256') ?? '', /^[0-9a-f]{64}$/, `${boot.name}: the guest wrote a file`));
  results.push(
    t.equal(
      m.get('reread-sha256'),
      m.get('written-sha256'),
      `${boot.name}: the written file reads back the same after remount and drop_caches`,
    ),
  );
  results.push(t.equal(m.get('note'), `written-by-${boot.tag}`, `${boot.name}: the note reads back`));
  results.push(
    t.equal(m.get('hello-after-sha256'), expect.base.helloSha256, `${boot.name}: hello.txt is intact after the writes`),
  );
  if (boot.mode === 'client') {
    results.push(t.equal(m.get('nbd-client'), 'disconnected', `${boot.name}: nbd-client -d disconnected /dev/nbd0`));
  }
  results.push(t.equal(boot.exit.code, 0, `${boot.name}: QEMU exited 0 (guest powered off)`));
  return keepConsole(t, boot, results, server);
}

/**
 * The checks of a boot whose nbd-client had to be refused (expectRefused): it was, the kernel
 * said why (its log line, as a marker) or, with `kernelReason` undefined, the refusal came
 * before the kernel was given the device (a failed negotiation: the kernel logged nothing), and
 * the guest powered off.
 */
export function checkRefusedBoot(t: Test, boot: Boot, kernelReason: RegExp | undefined, server?: Server): boolean {
  const m = boot.markers;
  const said = m.get('refused-by-kernel') ?? '';
  const results = [
    t.notOk(boot.timedOut, `${boot.name}: the boot finished within the timeout (${boot.ms} ms)`),
    t.equal(m.get('fail'), undefined, `${boot.name}: no step failed in the guest`),
    t.equal(m.get('nbd-client'), 'refused', `${boot.name}: nbd-client failed to set up /dev/nbd0`),
    kernelReason === undefined
      ? t.equal(said, 'none', `${boot.name}: refused in the negotiation, before the kernel had the device`)
      : t.match(said, kernelReason, `${boot.name}: the kernel says why (refused-by-kernel=${said})`),
    t.equal(m.get('done'), 'ok', `${boot.name}: the guest script ran to the end`),
    t.equal(boot.exit.code, 0, `${boot.name}: QEMU exited 0 (guest powered off)`),
  ];
  return keepConsole(t, boot, results, server);
}

/** Whether every check passed; the console is kept when one failed (or NBD_COW_GUEST_VERBOSE). */
function keepConsole(t: Test, boot: Boot, results: readonly boolean[], server: Server | undefined): boolean {
  const ok = results.every((r) => r);
  if (!ok) reportFailedBoot(t, boot, server);
  else if (process.env['NBD_COW_GUEST_VERBOSE']) reportFailedBoot(t, boot, server, false);
  return ok;
}

/**
 * Once a guest has gone (QEMU sent NBD_CMD_DISC and exited), its overlay file is deleted: the
 * overlay directory empties within a few seconds, but for the named overlays in `kept` (file
 * names, e.g. named-base@vm1.cow), which stay.
 */
export async function checkOverlaysGone(
  t: Test,
  overlayDir: string,
  after: string,
  kept: readonly string[] = [],
): Promise<boolean> {
  const want = [...kept].sort();
  const left = await waitForDir(overlayDir, (names) => JSON.stringify(names) === JSON.stringify(want), 5_000);
  return t.same(
    left,
    want,
    kept.length === 0
      ? `no overlay file is left after ${after}`
      : `after ${after} only the named overlay(s) ${want.join(', ')} are left`,
  );
}

export interface GuestSetup {
  readonly guest: Guest;
  readonly dir: string;
  /** The overlay directory to give the server. */
  readonly overlays: string;
  readonly base: BaseImage;
}

/** What every guest test starts from: the cached guest, a fresh ext4 base and an overlay dir. */
export async function setUpGuest(t: Test, baseName?: string): Promise<GuestSetup> {
  const guest = await ensureGuest();
  const accel = await detectAccel(guest);
  t.comment(
    `guest ${guest.kernelPackage} (${guest.built ? `built in ${guest.buildMs} ms` : 'cached'}); accel ${accel.accel} (${accel.why})`,
  );
  const dir = t.testdir();
  return { guest, dir, overlays: `${dir}/overlays`, base: await makeBaseImage(dir, baseName) };
}

/** End of a guest test: the server stops cleanly on SIGTERM and the base is byte-identical. */
export async function stopAndCheckBase(t: Test, server: Server, base: BaseImage): Promise<void> {
  const stopped = await server.stop();
  t.equal(stopped.code, 0, 'the server stops cleanly on SIGTERM');
  t.equal(await sha256File(base.path), base.sha256, 'the base image is unchanged (sha256)');
}
