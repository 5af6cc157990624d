// bindSharedSocket with real sockets: a TCP or unix socket is bound but not listening (connections
// are refused) until a net.Server listens on the handle, as a worker does; a unix socket appears at
// its path only at publish(); a busy port or a live unix socket is refused with a readable error,
// a stale socket file is replaced, and a unix path too long for sun_path is refused before any
// bind. The workers here are net.Servers in this
// process: how each kind of handle is closed then is explained at closeBoth().

import { spawnSync } from 'node:child_process';
import { existsSync, lstatSync, readFileSync, unlinkSync, writeFileSync } from 'node:fs';
import { connect, createServer, type NetConnectOpts, type Server } from 'node:net';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { bindSharedSocket, type SharedSocket } from '../../lib/server/shared-socket.js';
import { shortDir } from '../helpers/server-fixture.js';
import { within } from '../helpers/wait.js';

const WAIT_MS = 5000;

/** 'connected', or the error code of a connection attempt. */
function tryConnect(options: NetConnectOpts): Promise<string> {
  const socket = connect(options);
  return within(
    new Promise<string>((resolve) => {
      socket.once('connect', () => resolve('connected'));
      socket.once('error', (err: NodeJS.ErrnoException) => resolve(err.code ?? err.message));
    }),
    WAIT_MS,
    'connection attempt',
  ).finally(() => socket.destroy());
}

/** Send `text`, half-close, and return everything the server sent back until it ended. */
function roundTrip(options: NetConnectOpts, text: string): Promise<string> {
  const socket = connect(options);
  return within(
    new Promise<string>((resolve, reject) => {
      const chunks: Buffer[] = [];
      socket.once('error', reject);
      socket.on('data', (chunk: Buffer) => chunks.push(chunk));
      socket.once('end', () => resolve(Buffer.concat(chunks).toString()));
      socket.once('connect', () => socket.end(text));
    }),
    WAIT_MS,
    'echo round trip',
  ).finally(() => socket.destroy());
}

interface Worker {
  readonly server: Server;
  /** Connections its connection handler has seen. */
  accepted: number;
}

/** Listen on the shared handle in this process, as a worker does, with an echo server. */
function listenAsWorker(shared: SharedSocket): Promise<Worker> {
  const worker: Worker = {
    server: createServer((socket) => {
      worker.accepted++;
      socket.on('error', () => socket.destroy());
      socket.pipe(socket);
    }),
    accepted: 0,
  };
  return within(
    new Promise<Worker>((resolve, reject) => {
      worker.server.once('error', reject);
      worker.server.listen(shared.handle, () => {
        worker.server.off('error', reject);
        resolve(worker);
      });
    }),
    WAIT_MS,
    'listen on the shared handle',
  );
}

/** Shared sockets closed with their worker's server (closeOnce), not alone. */
const closedByWorker = new WeakSet<SharedSocket>();

/**
 * Close the worker's server and then the primary's hold, once (again at teardown is a no-op).
 *
 * TCP: server.listen(handle) adopts that very TCP handle object (server._handle === handle), so
 * server.close() closes it and shared.close() then calls close() on a closed HandleWrap, which
 * Node ignores: harmless, and it is what the primary does.
 *
 * Unix: server.listen(handle) goes through handle.fd and opens a second Pipe on the same fd,
 * so both wrappers close that fd number. In separate processes (the real workers) each has its
 * own fd; here, the second close(2) must not hit a number that was reused in between. Both closes
 * run synchronously, back to back (Server.close closes its handle at once, and shared.close()
 * closes its handle before its first await), so nothing on this thread can open an fd between
 * them and the second close gets EBADF, which libuv ignores. The server goes first: a Pipe opened
 * from an fd does not unlink the file, so the primary's close is the one that removes it.
 */
function closeOnce(worker: Worker, shared: SharedSocket): () => Promise<{ fileAfterServerClose: boolean | null }> {
  closedByWorker.add(shared);
  let done: Promise<{ fileAfterServerClose: boolean | null }> | null = null;
  return () => {
    done ??= (async () => {
      const serverClosed = new Promise<void>((resolve) => worker.server.close(() => resolve()));
      const path = shared.address.kind === 'unix' ? shared.address.path : null;
      // existsSync is a stat(2): it opens no fd.
      const fileAfterServerClose = path === null ? null : existsSync(path);
      const sharedClosed = shared.close();
      await within(Promise.all([serverClosed, sharedClosed]), WAIT_MS, 'closing the server and the shared socket');
      return { fileAfterServerClose };
    })();
    return done;
  };
}

/** A worker listening on `shared` (listenAsWorker), and its closeOnce(), also run at teardown. */
async function workerOn(t: Test, shared: SharedSocket): Promise<{ worker: Worker; close: ReturnType<typeof closeOnce> }> {
  const worker = await listenAsWorker(shared);
  const close = closeOnce(worker, shared);
  t.teardown(close);
  return { worker, close };
}

/** Bind, closed at teardown unless closeOnce() took over closing it. */
async function bind(t: Test, ...args: Parameters<typeof bindSharedSocket>): Promise<SharedSocket> {
  const shared = await bindSharedSocket(...args);
  t.teardown(async () => {
    if (!closedByWorker.has(shared)) await shared.close();
  });
  return shared;
}

/** Bind a unix socket at `path` from a python3 that exits without unlinking it: a dead server's file. */
function bindDeadSocket(t: Test, path: string): void {
  const python = spawnSync(
    '/usr/bin/python3',
    ['-c', 'import socket, sys; socket.socket(socket.AF_UNIX, socket.SOCK_STREAM).bind(sys.argv[1])', path],
    { timeout: 10_000, encoding: 'utf8' },
  );
  t.equal(python.status, 0, `python3 bound the socket ${python.error?.message ?? python.stderr}`);
}

/** The pid of a process that has exited. */
function deadPid(): number {
  const pid = spawnSync('/bin/true').pid;
  if (pid === undefined) throw new Error('/bin/true did not start');
  return pid;
}

/** A net.Server listening on the unix socket `path`, closed at teardown. */
async function liveUnixServer(t: Test, path: string): Promise<Server> {
  const server = createServer((socket) => socket.end());
  await within(
    new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ path }, resolve);
    }),
    WAIT_MS,
    'listen on a unix path',
  );
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return server;
}

t.test('TCP: bound, refused until a worker listens on the handle, then served', async (t) => {
  const shared = await bind(t, { kind: 'tcp', host: '127.0.0.1', port: 0 });
  const { address } = shared;
  if (address.kind !== 'tcp') {
    t.fail(`a tcp address, not ${address.kind}`);
    return;
  }
  t.equal(address.host, '127.0.0.1');
  t.ok(address.port > 0, 'the real port of port 0');
  t.strictSame(address, { kind: 'tcp', host: '127.0.0.1', port: address.port });
  const target = { host: '127.0.0.1', port: address.port };
  t.equal(await tryConnect(target), 'ECONNREFUSED', 'bound but not listening: refused');

  const { worker, close } = await workerOn(t, shared);
  t.equal((worker.server as unknown as { _handle: unknown })._handle, shared.handle, 'the server adopts the handle itself');
  t.equal(await roundTrip(target, 'hello, worker'), 'hello, worker', 'echoed by the worker');
  t.equal(worker.accepted, 1, "the worker's connection handler ran");

  await close();
  t.equal(await tryConnect(target), 'ECONNREFUSED', 'closed: refused again');
});

t.test('TCP: a port in use is refused with a readable error', async (t) => {
  const busy = createServer();
  await within(new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve)), WAIT_MS, 'listen on a free port');
  t.teardown(() => new Promise<void>((resolve) => busy.close(() => resolve())));
  const bound = busy.address();
  if (bound === null || typeof bound === 'string') {
    t.fail('no port');
    return;
  }
  // libuv defers a TCP bind's EADDRINUSE to listen() (and getsockname() returns it meanwhile), so
  // this is only refused here if bindSharedSocket looks for it before a worker would listen.
  await t.rejects(bindSharedSocket({ kind: 'tcp', host: '127.0.0.1', port: bound.port }), {
    message: `cannot listen on 127.0.0.1:${bound.port}: address already in use`,
    code: 'EADDRINUSE',
  });
});

t.test('unix: bound under a staging name, at its path with its mode from publish(), removed at close', async (t) => {
  const path = join(shortDir(t), 'nbd.sock');
  const staging = `${path}.${process.pid}.new`;
  const shared = await bind(t, { kind: 'unix', path }, { mode: 0o600 });
  t.strictSame(shared.address, { kind: 'unix', path });
  t.notOk(existsSync(path), 'nothing at the path before publish()');
  t.equal(await tryConnect({ path }), 'ENOENT', 'so a client finds no socket, not a refusing one');
  t.ok(lstatSync(staging).isSocket(), 'bound under the staging name');

  const { worker, close } = await workerOn(t, shared);
  await shared.publish();
  const stats = lstatSync(path);
  t.ok(stats.isSocket(), 'a socket file at the path');
  t.equal((stats.mode & 0o777).toString(8), '600');
  t.notOk(existsSync(staging), 'the staging name is gone');
  t.equal(await roundTrip({ path }, 'over unix'), 'over unix', 'echoed by the worker');
  t.equal(worker.accepted, 1, "the worker's connection handler ran");

  const { fileAfterServerClose } = await close();
  t.equal(fileAfterServerClose, true, "closing the worker's server leaves the file");
  t.notOk(existsSync(path), "the primary's close() removes the socket file");
});

t.test('unix: a stale socket file, nobody listening on it, is replaced', async (t) => {
  const path = join(shortDir(t), 'nbd.sock');
  // Bound and never listened on, then exit without unlinking: the file of a server that is gone.
  bindDeadSocket(t, path);
  t.ok(lstatSync(path).isSocket(), 'the stale socket file is there');
  t.equal(await tryConnect({ path }), 'ECONNREFUSED', 'nobody answers on it');

  const shared = await bind(t, { kind: 'unix', path });
  const { close } = await workerOn(t, shared);
  await shared.publish();
  t.ok(lstatSync(path).isSocket(), 'a socket file again');
  t.equal(await roundTrip({ path }, 'replaced'), 'replaced', 'served on the replaced path');
  await close();
});

t.test('unix: staging names of dead primaries are removed', async (t) => {
  const path = join(shortDir(t), 'nbd.sock');
  // A primary killed while its workers started leaves its staging socket.
  const dead = `${path}.${deadPid()}.new`;
  bindDeadSocket(t, dead);
  // pid 1 runs: a server that is starting. A plain file of that shape is not ours.
  const live = `${path}.1.new`;
  bindDeadSocket(t, live);
  const plain = `${path}.${deadPid()}.new`;
  writeFileSync(plain, 'not a socket');

  const shared = await bind(t, { kind: 'unix', path });
  t.notOk(existsSync(dead), "the dead primary's staging socket is gone");
  t.ok(lstatSync(live).isSocket(), "a live process's staging socket is left");
  t.equal(readFileSync(plain, 'utf8'), 'not a socket', 'a file that is no socket is left');
  const { close } = await workerOn(t, shared);
  await shared.publish();
  t.equal(await roundTrip({ path }, 'swept'), 'swept', 'served at its path');
  await close();
});

t.test('unix: a server started before another publishes takes the path; the other is refused', async (t) => {
  const path = join(shortDir(t), 'nbd.sock');
  const first = await bind(t, { kind: 'unix', path });
  const { close: closeFirst } = await workerOn(t, first);
  // The first's workers are still starting: its path is free, so the second binds and publishes.
  const second = await bind(t, { kind: 'unix', path });
  const { worker: secondWorker, close: closeSecond } = await workerOn(t, second);
  await second.publish();
  await t.rejects(first.publish(), { message: `cannot listen on ${path}: address already in use`, code: 'EADDRINUSE' });
  t.equal(await roundTrip({ path }, 'second'), 'second');
  t.equal(secondWorker.accepted, 1, "the path is the second server's");
  await closeFirst();
  t.ok(lstatSync(path).isSocket(), "the first's close leaves the second's file");
  t.equal(await roundTrip({ path }, 'still'), 'still');
  await closeSecond();
  t.notOk(existsSync(path));
});

t.test('unix: close() leaves a file that replaced its own at the path', async (t) => {
  const path = join(shortDir(t), 'nbd.sock');
  const shared = await bind(t, { kind: 'unix', path });
  const { close } = await workerOn(t, shared);
  await shared.publish();
  unlinkSync(path); // removed by hand, and another server started on the path
  await liveUnixServer(t, path);
  await close();
  t.equal(await tryConnect({ path }), 'connected', "the other server's file is still there");
});

t.test('unix: a path with no room for the staging name is bound at once, as it is', async (t) => {
  const dir = shortDir(t);
  const path = join(dir, 'x'.repeat(104 - dir.length));
  t.ok(Buffer.byteLength(`${path}.${process.pid}.new`) > 107, 'the staging name would not fit sun_path');
  const shared = await bind(t, { kind: 'unix', path });
  t.ok(lstatSync(path).isSocket(), 'bound at its path');
  t.equal(await tryConnect({ path }), 'ECONNREFUSED', 'refused until a worker listens');
  const { close } = await workerOn(t, shared);
  await shared.publish();
  t.equal(await roundTrip({ path }, 'long'), 'long');
  await close();
  t.notOk(existsSync(path), 'removed at close');
});

t.test('unix: a live socket is never replaced', async (t) => {
  const path = join(shortDir(t), 'live.sock');
  await liveUnixServer(t, path);
  await t.rejects(bindSharedSocket({ kind: 'unix', path }), {
    message: `cannot listen on ${path}: address already in use`,
    code: 'EADDRINUSE',
  });
  t.equal(await tryConnect({ path }), 'connected', 'the live server still answers on its file');
});

t.test('unix: a file that is not a socket is refused at once, and left alone', async (t) => {
  const path = join(shortDir(t), 'plain');
  writeFileSync(path, 'not a socket');
  await t.rejects(bindSharedSocket({ kind: 'unix', path }), {
    message: `cannot listen on ${path}: address already in use`,
    code: 'EADDRINUSE',
  });
  t.equal(readFileSync(path, 'utf8'), 'not a socket');
  t.notOk(existsSync(`${path}.${process.pid}.new`), 'nothing bound');
});

t.test('unix: a path over 107 bytes is refused before any bind', async (t) => {
  const dir = shortDir(t);
  const path = join(dir, 'x'.repeat(120 - dir.length));
  t.ok(Buffer.byteLength(path) > 107, 'longer than sun_path holds');
  await t.rejects(bindSharedSocket({ kind: 'unix', path }), {
    message: /socket path too long/,
    code: 'ENAMETOOLONG',
  });
  t.notOk(existsSync(path), 'no file made');
});
