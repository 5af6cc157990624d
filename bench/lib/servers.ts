// How each server under test is started: nbd-cow (ours) and the anchors. Every start gets a
// new empty run directory (overlay, socket, config, log) and listens on 127.0.0.1 or on a
// unix socket inside that directory.

import { type ChildProcess, spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import type { ListenAddress } from '../../lib/server/listener.js';
import { tlsFixtures } from '../../test/helpers/tls-fixtures.js';
import { alive, registerPid, sleep, spawnLogged } from './proc.js';

export type Transport = 'tcp' | 'unix';

/** Where a started server listens: our client's target, fio's URI, and the socket or port. */
export interface Endpoint {
  readonly target: ListenAddress;
  readonly uri: string;
  readonly socket: string | null;
  readonly port: number | null;
  /** fio's environment when it needs one: libnbd reads TLS certificates from $HOME/.pki/libnbd. */
  readonly clientEnv?: NodeJS.ProcessEnv;
}

/** What every start gets. */
export interface StartContext {
  readonly base: string;
  readonly baseMB: number;
  /** A new empty run dir for this start. */
  readonly run: string;
  readonly transport: Transport;
  readonly logFd: number;
  readonly oursArgs: readonly string[];
  /** The server's ServerDef.exportName. */
  readonly exportName: string;
  /** The checkout's top directory (dist/bin/nbd-cow.js). */
  readonly root: string;
}

export interface StartedServer {
  /** 0 if spawn() failed: alive(0) is false, so the start fails as "exited". */
  readonly pid: number;
  /** The process we spawned, if the server is that process (not a daemon). */
  readonly child: ChildProcess | null;
  readonly endpoint: Endpoint;
  readonly cmd: string;
  readonly overlayDir: string;
  /** nbd-cow's first stdout line (its URI) once printed; null if it exited first. */
  readonly stdoutReady?: Promise<string | null>;
}

/** A started server that answered a handshake, with the run dir it was given. */
export interface RunningServer extends StartedServer {
  /** This start's run dir (overlay, socket, logs). */
  readonly run: string;
  readonly logFile: string;
}

/** A start that failed: why (with the log's last lines), and the run dir. */
export interface StartFailure {
  readonly error: string;
  readonly run: string;
}

export interface ServerDef {
  /** A copy-on-write anchor: competes for "best CoW anchor". */
  readonly cow: boolean;
  /** Reads return the base's bytes, so session reads can be checked against it. */
  readonly servesBase: boolean;
  readonly exportName: string;
  /** The command whose version is reported and whose absence skips the server; null for nbd-cow. */
  readonly binary: string | null;
  readonly notes: string;
  /** An OURS_VARIANTS row: nbd-cow with other flags, never an anchor. */
  readonly variant?: boolean;
  /** The variant's flags, in place of OURS_ARGS. */
  readonly oursArgs?: readonly string[];
  start(ctx: StartContext): Promise<StartedServer>;
}

/** A free TCP port on 127.0.0.1 (bound, read and released). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const address = s.address();
      if (address === null || typeof address === 'string') {
        s.close(() => reject(new Error('no TCP address for a free port')));
        return;
      }
      s.close(() => resolve(address.port));
    });
  });
}

interface Prepared {
  readonly overlayDir: string;
  readonly ep: Endpoint;
}

/**
 * What every start needs: the endpoint (a free port on 127.0.0.1, or `nbd.sock` in the run
 * dir) and a new empty `overlay` dir in the run dir.
 */
async function prepare(ctx: StartContext): Promise<Prepared> {
  const overlayDir = join(ctx.run, 'overlay');
  mkdirSync(overlayDir);
  if (ctx.transport === 'unix') {
    const path = join(ctx.run, 'nbd.sock');
    return {
      overlayDir,
      ep: { target: { kind: 'unix', path }, uri: `nbd+unix:///${ctx.exportName}?socket=${path}`, socket: path, port: null },
    };
  }
  const port = await freePort();
  return {
    overlayDir,
    ep: {
      target: { kind: 'tcp', host: '127.0.0.1', port },
      uri: `nbd://127.0.0.1:${port}/${ctx.exportName}`,
      socket: null,
      port,
    },
  };
}

const qemuListen = (ep: Endpoint): string[] =>
  ep.socket ? [`--socket=${ep.socket}`] : ['--bind=127.0.0.1', `--port=${ep.port}`];

const quote = (a: string): string => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`);
const cmdline = (cmd: string, args: readonly string[], env = ''): string => `${env}${[cmd, ...args].map(quote).join(' ')}`;

function tmpEnv(dir: string): NodeJS.ProcessEnv {
  return { ...process.env, TMPDIR: dir };
}

async function startOurs(ctx: StartContext): Promise<StartedServer> {
  const { ep, overlayDir } = await prepare(ctx);
  const listen = ep.socket ? ['-k', ep.socket] : ['-b', '127.0.0.1', '-p', String(ep.port)];
  const cli = join(ctx.root, 'dist', 'bin', 'nbd-cow.js');
  const args = ['serve', ctx.base, ...listen, '--overlay-dir', overlayDir, '-q', ...ctx.oursArgs];
  const child = spawnLogged(process.execPath, [cli, ...args], { logFd: ctx.logFd, stdout: 'pipe' });
  const stdout = child.stdout;
  if (stdout === null) throw new Error('nbd-cow was started without a stdout pipe');
  // Node runs the compiled CLI itself, so this PID is the server. It prints its URI on stdout
  // once it listens.
  const stdoutReady = new Promise<string | null>((resolve) => {
    let buf = '';
    stdout.on('data', (d: Buffer) => {
      buf += d.toString();
      writeFileSync(join(ctx.run, 'stdout.log'), buf);
      if (buf.includes('\n')) resolve(buf.split('\n')[0] ?? '');
    });
    child.once('exit', () => resolve(null));
  });
  return { pid: child.pid ?? 0, child, endpoint: ep, cmd: cmdline('dist/bin/nbd-cow.js', args), overlayDir, stdoutReady };
}

async function startNbdServer(ctx: StartContext): Promise<StartedServer> {
  const { ep, overlayDir } = await prepare(ctx);
  const conf = join(ctx.run, 'nbd-server.conf');
  const pidFile = join(ctx.run, 'nbd-server.pid');
  const listen = ep.socket ? [`unixsock = ${ep.socket}`] : ['listenaddr = 127.0.0.1', `port = ${ep.port}`];
  writeFileSync(
    conf,
    [
      '[generic]',
      ...listen.map((l) => `    ${l}`),
      '[base]',
      `    exportname = ${ctx.base}`,
      '    copyonwrite = true',
      `    cowdir = ${overlayDir}`,
      '',
    ].join('\n'),
  );
  // `nbd-server -d` would serve a single connection, so let it daemonize.
  const args = ['-C', conf, '-p', pidFile];
  const r = spawnSync('nbd-server', args, { stdio: ['ignore', ctx.logFd, ctx.logFd], timeout: 10000 });
  if (r.status !== 0) throw new Error(`nbd-server exited with ${r.status}`);
  let pid: number | null = null;
  for (let i = 0; i < 100 && pid === null; i++) {
    try {
      const p = Number(readFileSync(pidFile, 'utf8').trim());
      if (p > 0 && alive(p)) pid = p;
    } catch {
      // not yet written
    }
    if (pid === null) await sleep(50);
  }
  if (pid === null) throw new Error('nbd-server wrote no pid file');
  registerPid(pid);
  return { pid, child: null, endpoint: ep, cmd: cmdline('nbd-server', args), overlayDir };
}

async function startQemuNbd(ctx: StartContext): Promise<StartedServer> {
  const { ep, overlayDir } = await prepare(ctx);
  const overlay = join(overlayDir, 'overlay.qcow2');
  const mk = spawnSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', ctx.base, '-F', 'raw', overlay], {
    stdio: ['ignore', ctx.logFd, ctx.logFd],
  });
  if (mk.status !== 0) throw new Error('qemu-img create failed');
  const args = [
    '--format=qcow2',
    '--cache=writeback',
    '--persistent',
    '--shared=0',
    `--export-name=${ctx.exportName}`,
    ...qemuListen(ep),
    overlay,
  ];
  const child = spawnLogged('qemu-nbd', args, { logFd: ctx.logFd });
  return {
    pid: child.pid ?? 0,
    child,
    endpoint: ep,
    cmd: `qemu-img create -f qcow2 -b BASE -F raw OVERLAY && ${cmdline('qemu-nbd', args)}`,
    overlayDir,
  };
}

async function startQemuNbdSnapshot(ctx: StartContext): Promise<StartedServer> {
  const { ep, overlayDir } = await prepare(ctx);
  const args = [
    '--snapshot',
    '--format=raw',
    '--cache=writeback',
    '--persistent',
    '--shared=0',
    `--export-name=${ctx.exportName}`,
    ...qemuListen(ep),
    ctx.base,
  ];
  const child = spawnLogged('qemu-nbd', args, { logFd: ctx.logFd, env: tmpEnv(overlayDir) });
  return { pid: child.pid ?? 0, child, endpoint: ep, cmd: cmdline('qemu-nbd', args, 'TMPDIR=OVERLAY_DIR '), overlayDir };
}

async function startNbdkit(ctx: StartContext, pluginArgs: readonly string[]): Promise<StartedServer> {
  const { ep, overlayDir } = await prepare(ctx);
  const listen = ep.socket ? [`--unix=${ep.socket}`] : ['--ipaddr=127.0.0.1', `--port=${ep.port}`];
  const args = ['--foreground', '--exit-with-parent', ...listen, ...pluginArgs];
  const child = spawnLogged('nbdkit', args, { logFd: ctx.logFd, env: tmpEnv(overlayDir) });
  return { pid: child.pid ?? 0, child, endpoint: ep, cmd: cmdline('nbdkit', args, 'TMPDIR=OVERLAY_DIR '), overlayDir };
}

/**
 * `def` with TLS on, X.509 (test/helpers/tls-fixtures.ts makes the CA and certificates): the
 * server gets `--tls on` and the server certificate directory; fio connects with nbds:// and
 * libnbd's default client certificate directory, $HOME/.pki/libnbd, in a HOME of the run dir
 * (libnbd refuses files named in the URI unless the program allows it, which fio does not).
 * Our own client (readiness probe, sessions) stays in clear text, which `--tls on` still serves.
 */
function overTls(
  def: ServerDef,
  notes: string,
  start: (ctx: StartContext, serverDir: string) => Promise<StartedServer>,
): ServerDef {
  return {
    ...def,
    cow: false,
    notes,
    start: async (ctx) => {
      const tls = await tlsFixtures();
      const home = join(ctx.run, 'home');
      const pki = join(home, '.pki', 'libnbd');
      mkdirSync(pki, { recursive: true });
      for (const file of ['ca-cert.pem', 'client-cert.pem', 'client-key.pem'])
        copyFileSync(join(tls.alice.dir, file), join(pki, file));
      const started = await start(ctx, tls.serverDir);
      const { target } = started.endpoint;
      if (target.kind === 'inherited') throw new Error('benchmark servers listen on their own sockets');
      const uri =
        target.kind === 'tcp'
          ? `nbds://127.0.0.1:${target.port}/${ctx.exportName}`
          : `nbds+unix:///${ctx.exportName}?socket=${target.path}`;
      return { ...started, endpoint: { ...started.endpoint, uri, clientEnv: { ...process.env, HOME: home } } };
    },
  };
}

const NBD_COW: ServerDef = {
  cow: true,
  servesBase: true,
  exportName: '',
  binary: null, // dist/bin/nbd-cow.js of this checkout
  notes: 'ours: a private overlay file per connection (ephemeral, deleted at disconnect)',
  start: startOurs,
};

const NBDKIT_COW: ServerDef = {
  cow: true,
  servesBase: true,
  exportName: '',
  binary: 'nbdkit',
  notes: 'nbdkit --filter=cow file: one overlay (unlinked temp file in TMPDIR, 64 KiB blocks) shared by all connections',
  start: (ctx) => startNbdkit(ctx, ['--filter=cow', 'file', ctx.base]),
};

/** nbd-cow and the anchors, by the names SERVERS= takes. */
export const SERVERS: Readonly<Record<string, ServerDef>> = {
  'nbd-cow': NBD_COW,

  'nbd-server': {
    cow: true,
    servesBase: true,
    exportName: 'base',
    binary: 'nbd-server',
    notes:
      'copyonwrite = true: a diff file per connection (forks a child per connection); daemonizes, stopped by the PID in its pid file',
    start: startNbdServer,
  },

  'qemu-nbd': {
    cow: true,
    servesBase: true,
    exportName: 'base',
    binary: 'qemu-nbd',
    notes: 'one qcow2 overlay (qemu-img create -b base, 64 KiB clusters) shared by all connections',
    start: startQemuNbd,
  },

  'qemu-nbd-snapshot': {
    cow: true,
    servesBase: true,
    exportName: 'base',
    binary: 'qemu-nbd',
    notes: 'qemu-nbd --snapshot: an unlinked temporary qcow2 overlay in TMPDIR, shared by all connections',
    start: startQemuNbdSnapshot,
  },

  'nbdkit-cow': NBDKIT_COW,

  'nbdkit-memory': {
    cow: false,
    servesBase: false,
    exportName: '',
    binary: 'nbdkit',
    notes: 'RAM only, no base (reads of unwritten areas are zeros): the cost of the protocol itself',
    start: (ctx) => startNbdkit(ctx, ['memory', `size=${ctx.baseMB}M`]),
  },

  // TLS rows (SERVERS="nbd-cow-tls nbdkit-cow-tls"): the same servers with TLS on, X.509; not
  // anchors of the CoW columns: compare them with each other.
  'nbd-cow-tls': overTls(NBD_COW, 'nbd-cow --tls on --tls-certificates DIR, fio over nbds:// (X.509)', (ctx, dir) =>
    startOurs({ ...ctx, oursArgs: [...ctx.oursArgs, '--tls', 'on', '--tls-certificates', dir] }),
  ),
  'nbdkit-cow-tls': overTls(
    NBDKIT_COW,
    'nbdkit --tls=on --tls-certificates=DIR --filter=cow file, fio over nbds:// (X.509)',
    (ctx, dir) => startNbdkit(ctx, ['--tls=on', `--tls-certificates=${dir}`, '--filter=cow', 'file', ctx.base]),
  ),
};
