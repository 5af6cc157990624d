// How each server under test is started: nbd-cow (ours) and the anchors. Every start gets a
// new empty run directory (overlay, socket, config, log) and listens on 127.0.0.1 or on a
// unix socket inside that directory.

import { spawnSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import { alive, registerPid, sleep, spawnLogged } from './proc.mjs';

/** A free TCP port on 127.0.0.1 (bound, read and released). */
function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/**
 * What every start needs: the endpoint (a free port on 127.0.0.1, or `nbd.sock` in the run
 * dir) and a new empty `overlay` dir in the run dir.
 */
async function prepare(ctx, exportName) {
  const overlayDir = join(ctx.run, 'overlay');
  mkdirSync(overlayDir);
  if (ctx.transport === 'unix') {
    const path = join(ctx.run, 'nbd.sock');
    return {
      overlayDir,
      ep: { target: { kind: 'unix', path }, uri: `nbd+unix:///${exportName}?socket=${path}`, socket: path, port: null },
    };
  }
  const port = await freePort();
  return {
    overlayDir,
    ep: { target: { kind: 'tcp', host: '127.0.0.1', port }, uri: `nbd://127.0.0.1:${port}/${exportName}`, socket: null, port },
  };
}

const qemuListen = (ep) => (ep.socket ? [`--socket=${ep.socket}`] : ['--bind=127.0.0.1', `--port=${ep.port}`]);

const quote = (a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`);
const cmdline = (cmd, args, env = '') => `${env}${[cmd, ...args].map(quote).join(' ')}`;

function tmpEnv(dir) {
  return { ...process.env, TMPDIR: dir };
}

/**
 * name -> { cow, servesBase, exportName, binary, start(ctx) }.
 * cow: a copy-on-write anchor (competes for "best CoW anchor"); servesBase: reads return
 * the base's bytes (so session reads can be checked against it).
 * start(ctx) with ctx = { base, baseMB, run, transport, logFd, oursArgs, root } returns
 * { pid, child, endpoint, cmd, overlayDir, stdoutReady? }.
 */
export const SERVERS = {
  'nbd-cow': {
    cow: true,
    servesBase: true,
    exportName: '',
    binary: null, // bin/nbd-cow of this checkout
    notes: 'ours: a private overlay file per connection (ephemeral, deleted at disconnect)',
    async start(ctx) {
      const { ep, overlayDir } = await prepare(ctx, this.exportName);
      const listen = ep.socket ? ['-k', ep.socket] : ['-b', '127.0.0.1', '-p', String(ep.port)];
      const bin = join(ctx.root, 'bin', 'nbd-cow');
      const args = ['serve', ctx.base, ...listen, '--overlay-dir', overlayDir, '-q', ...ctx.oursArgs];
      const child = spawnLogged(bin, args, { logFd: ctx.logFd, stdout: 'pipe' });
      // bin/nbd-cow is `exec node ...`, so this PID is the server itself. It prints its URI
      // on stdout once it listens.
      const stdoutReady = new Promise((resolve) => {
        let buf = '';
        child.stdout.on('data', (d) => {
          buf += d.toString();
          writeFileSync(join(ctx.run, 'stdout.log'), buf);
          if (buf.includes('\n')) resolve(buf.split('\n')[0]);
        });
        child.once('exit', () => resolve(null));
      });
      return { pid: child.pid, child, endpoint: ep, cmd: cmdline('bin/nbd-cow', args), overlayDir, stdoutReady };
    },
  },

  'nbd-server': {
    cow: true,
    servesBase: true,
    exportName: 'base',
    binary: 'nbd-server',
    notes:
      'copyonwrite = true: a diff file per connection (forks a child per connection); daemonizes, stopped by the PID in its pid file',
    async start(ctx) {
      const { ep, overlayDir } = await prepare(ctx, this.exportName);
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
      let pid = null;
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
    },
  },

  'qemu-nbd': {
    cow: true,
    servesBase: true,
    exportName: 'base',
    binary: 'qemu-nbd',
    notes: 'one qcow2 overlay (qemu-img create -b base, 64 KiB clusters) shared by all connections',
    async start(ctx) {
      const { ep, overlayDir } = await prepare(ctx, this.exportName);
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
        `--export-name=${this.exportName}`,
        ...qemuListen(ep),
        overlay,
      ];
      const child = spawnLogged('qemu-nbd', args, { logFd: ctx.logFd });
      return {
        pid: child.pid,
        child,
        endpoint: ep,
        cmd: `qemu-img create -f qcow2 -b BASE -F raw OVERLAY && ${cmdline('qemu-nbd', args)}`,
        overlayDir,
      };
    },
  },

  'qemu-nbd-snapshot': {
    cow: true,
    servesBase: true,
    exportName: 'base',
    binary: 'qemu-nbd',
    notes: 'qemu-nbd --snapshot: an unlinked temporary qcow2 overlay in TMPDIR, shared by all connections',
    async start(ctx) {
      const { ep, overlayDir } = await prepare(ctx, this.exportName);
      const args = [
        '--snapshot',
        '--format=raw',
        '--cache=writeback',
        '--persistent',
        '--shared=0',
        `--export-name=${this.exportName}`,
        ...qemuListen(ep),
        ctx.base,
      ];
      const child = spawnLogged('qemu-nbd', args, { logFd: ctx.logFd, env: tmpEnv(overlayDir) });
      return { pid: child.pid, child, endpoint: ep, cmd: cmdline('qemu-nbd', args, 'TMPDIR=OVERLAY_DIR '), overlayDir };
    },
  },

  'nbdkit-cow': {
    cow: true,
    servesBase: true,
    exportName: '',
    binary: 'nbdkit',
    notes: 'nbdkit --filter=cow file: one overlay (unlinked temp file in TMPDIR, 64 KiB blocks) shared by all connections',
    async start(ctx) {
      return startNbdkit(ctx, this.exportName, ['--filter=cow', 'file', ctx.base]);
    },
  },

  'nbdkit-memory': {
    cow: false,
    servesBase: false,
    exportName: '',
    binary: 'nbdkit',
    notes: 'RAM only, no base (reads of unwritten areas are zeros): the cost of the protocol itself',
    async start(ctx) {
      return startNbdkit(ctx, this.exportName, ['memory', `size=${ctx.baseMB}M`]);
    },
  },
};

async function startNbdkit(ctx, exportName, pluginArgs) {
  const { ep, overlayDir } = await prepare(ctx, exportName);
  const listen = ep.socket ? [`--unix=${ep.socket}`] : ['--ipaddr=127.0.0.1', `--port=${ep.port}`];
  const args = ['--foreground', '--exit-with-parent', ...listen, ...pluginArgs];
  const child = spawnLogged('nbdkit', args, { logFd: ctx.logFd, env: tmpEnv(overlayDir) });
  return { pid: child.pid, child, endpoint: ep, cmd: cmdline('nbdkit', args, 'TMPDIR=OVERLAY_DIR '), overlayDir };
}
