// The listening sockets of `serve --workers N` (workers.ts): the primary binds each one and holds
// it without ever accepting on it; every worker listens on the same socket (sent over the IPC
// channel) and accepts its connections itself, as nginx's workers and node:cluster's "shared
// handle" workers do. No connection then passes through the primary.
//
// Node's public API cannot bind a socket without polling it, so this uses the function
// node:cluster binds its shared sockets with (`net._createServerHandle`, in every Node since 0.x,
// and checked for at start): it returns the libuv handle, bound, not yet listening. Until the
// first worker's listen(), a client is refused (the primary prints its URI only after every
// worker listens). From then on the socket stays listening as long as the primary holds it, so
// clients wait in the backlog while no worker is there (a worker being replaced).
//
// A unix socket is bound under a staging name beside its path (`PATH.PID.new`) and linked to
// its path only once the workers listen (publish()). Bound at its path, it would refuse
// connections for the second or so a worker takes to start, and a second server started then
// would take it for a dead server's file, replace it, and leave this one serving nobody. A path
// with no room for the staging name in sun_path is bound as it is, with that window. close()
// removes the path only while it is still this socket's file. A primary killed while its workers
// start (SIGKILL) leaves its staging name behind; the next server bound at that path removes
// the staging sockets of processes that are gone. libuv binds a
// TCP socket with SO_REUSEADDR and reports a port in use only at listen() (getsockname() returns
// the error meanwhile), so a port taken by a listening server is refused here and one taken in
// the moment between this bind and the first listen() by that worker (workers.ts).

import { lookup } from 'node:dns/promises';
import { link, lstat, readdir, unlink } from 'node:fs/promises';
import * as net from 'node:net';
import { basename, dirname, join } from 'node:path';
import { getSystemErrorName } from 'node:util';
import { processExists } from '../block/process-alive.js';
import { unixSocketPath } from './inherited-socket.js';
import {
  checkUnixPath,
  describeListenError,
  isSocketAlive,
  type ListenAddress,
  MAX_UNIX_PATH_BYTES,
  removeIfStale,
} from './listener.js';
import { applySocketPermissions, bindOwnerOnly, type SocketPermissions } from './socket-permissions.js';

/** A libuv TCP or pipe handle, as node:net makes them; sent to workers as it is. */
export interface ServerHandle {
  readonly fd: number;
  getsockname?(out: { address?: string; port?: number }): number;
  close(): void;
}

type CreateServerHandle = (
  address: string | null,
  port: number | null,
  addressType: number | null,
  fd?: number,
) => ServerHandle | number;

function createServerHandle(): CreateServerHandle {
  const create = (net as unknown as { _createServerHandle?: CreateServerHandle })._createServerHandle;
  if (typeof create !== 'function') {
    throw new Error(`--workers above 1 needs net._createServerHandle, which this Node.js (${process.version}) lacks`);
  }
  return create;
}

export interface SharedSocket {
  readonly handle: ServerHandle;
  /** Where it listens (the real port when 0 was asked for; an inherited socket's real address). */
  readonly address: ListenAddress;
  /**
   * Make it reachable at its address: a unix socket, bound under a staging name, gets its path
   * (see the top). Called once a worker listens on it; EADDRINUSE if another server took the
   * path meanwhile. Nothing to do for a TCP or inherited socket.
   */
  publish(): Promise<void>;
  /** Close the primary's hold on it (and remove a unix socket file it made). */
  close(): Promise<void>;
}

/** Bind `address` for the workers to listen on, checked as a listener checks it (listener.ts). */
export async function bindSharedSocket(address: ListenAddress, permissions?: SocketPermissions): Promise<SharedSocket> {
  const create = createServerHandle();
  const fail = (code: number): never => {
    throw describeListenError(Object.assign(new Error(getSystemErrorName(code)), { code: getSystemErrorName(code) }), address);
  };
  if (address.kind === 'inherited') {
    const handle = create(null, null, null, address.fd);
    if (typeof handle === 'number') return fail(handle);
    const name = socketName(handle);
    const tcp: ListenAddress | null =
      name.err === 0 && name.port !== undefined ? { kind: 'tcp', host: name.address ?? '', port: name.port } : null;
    const path = tcp === null ? unixSocketPath(address.fd) : null;
    const resolved: ListenAddress = tcp ?? (path === null ? address : { kind: 'unix', path });
    return { handle, address: resolved, publish: async () => undefined, close: async () => handle.close() };
  }
  if (address.kind === 'tcp') {
    const host = net.isIP(address.host) !== 0 ? address.host : (await lookup(address.host)).address;
    const handle = create(host, address.port, net.isIP(host));
    if (typeof handle === 'number') return fail(handle);
    const name = socketName(handle);
    if (name.err !== 0) {
      handle.close();
      return fail(name.err); // a port in use, reported by libuv only now (see the top)
    }
    return {
      handle,
      address: { kind: 'tcp', host: address.host, port: name.port ?? address.port },
      publish: async () => undefined,
      close: async () => handle.close(),
    };
  }
  checkUnixPath(address.path);
  const bindPath = (path: string): ServerHandle | number => {
    let made: ServerHandle | number = -1;
    const umaskMode = bindOwnerOnly(() => {
      made = create(path, -1, -1);
    });
    const handle = made as ServerHandle | number;
    if (typeof handle !== 'number') {
      try {
        // Owner-only until the mode and group are set (bindOwnerOnly), as a listener does.
        applySocketPermissions(path, permissions?.mode ?? umaskMode, permissions?.gid);
      } catch (err) {
        handle.close(); // libuv removes the file of a pipe it bound
        throw err;
      }
    }
    return handle;
  };
  const inUse = (): never => {
    throw describeListenError(Object.assign(new Error('EADDRINUSE'), { code: 'EADDRINUSE' }), address);
  };
  const path = address.path;
  const staging = `${path}.${process.pid}.new`;
  if (Buffer.byteLength(staging) > MAX_UNIX_PATH_BYTES) {
    // No room for the staging name: bound at its path at once (the window in the top comment).
    let handle = bindPath(path);
    if (typeof handle === 'number' && getSystemErrorName(handle) === 'EADDRINUSE' && (await removeIfStale(path))) {
      handle = bindPath(path);
    }
    if (typeof handle === 'number') return fail(handle);
    const bound = handle;
    // Closing it removes the socket file (libuv does, for a pipe it bound); a worker's copy does not.
    return { handle: bound, address, publish: async () => undefined, close: async () => bound.close() };
  }
  // A live server's socket, or a file that is no socket, is refused now; a dead server's socket
  // file is replaced at publish().
  const existing = await lstat(path).catch(() => null);
  if (existing !== null && (!existing.isSocket() || (await isSocketAlive(path)))) return inUse();
  await unlink(staging).catch(() => undefined); // left by a process that had this pid
  await removeDeadStagingNames(path);
  const handle = bindPath(staging);
  if (typeof handle === 'number') return fail(handle);
  const bound = handle;
  /** The inode published at `path`, which close() removes only if it is still there. */
  let published: number | null = null;
  return {
    handle: bound,
    address,
    publish: async () => {
      try {
        await link(staging, path);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'EEXIST' || !(await removeIfStale(path))) return inUse();
        await link(staging, path).catch(() => inUse());
      }
      published = (await lstat(path)).ino;
      await unlink(staging).catch(() => undefined);
    },
    close: async () => {
      bound.close(); // libuv removes the staging name, gone since publish()
      if (published === null) return;
      const stats = await lstat(path).catch(() => null);
      if (stats?.ino === published) await unlink(path).catch(() => undefined);
    },
  };
}

/**
 * Remove the staging sockets (`PATH.PID.new`) beside `path` whose process no longer runs: what
 * a primary killed during its start leaves behind. Only sockets: any other file of that name is
 * not one of ours. Those of a live process, this one's included, are left alone.
 */
export async function removeDeadStagingNames(path: string): Promise<void> {
  const stem = `${basename(path)}.`;
  for (const name of await readdir(dirname(path)).catch(() => [] as string[])) {
    if (!name.startsWith(stem) || !name.endsWith('.new')) continue;
    const digits = name.slice(stem.length, -'.new'.length);
    if (!/^[1-9]\d{0,9}$/.test(digits)) continue;
    const pid = Number(digits);
    if (pid === process.pid || processExists(pid)) continue;
    const staging = join(dirname(path), name);
    const stats = await lstat(staging).catch(() => null);
    // Gone meanwhile (another server removed it), or not ours to remove: left as it is.
    if (stats?.isSocket() === true) await unlink(staging).catch(() => undefined);
  }
}

/** getsockname() of a TCP handle: its error (a bind's deferred one) or its address; a unix socket's has no port. */
function socketName(handle: ServerHandle): { err: number; address?: string; port?: number } {
  const out: { address?: string; port?: number } = {};
  const err = handle.getsockname?.(out) ?? 0;
  return { err, ...out };
}
