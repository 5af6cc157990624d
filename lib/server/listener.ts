// The listener: a net.Server on TCP, a unix socket or a socket inherited from systemd that hands
// each accepted socket to a Connection, keeps track of them, and shuts down gracefully (stop
// accepting, let in-flight requests finish, close every device so ephemeral overlays are deleted).

import { lstat, unlink } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { BufferPool } from '../buffer-pool.js';
import type { Logger } from '../log.js';
import { Admission, type AdmissionPolicy, describePeer } from './admission.js';
import { Connection } from './connection.js';
import type { ConnectionLimits } from './connection-limits.js';
import type { ExportRegistry } from './exports.js';
import type { Replay } from './hand-over.js';
import { resolveInherited } from './inherited-socket.js';
import type { MemoryBudget } from './memory-budget.js';
import { NO_EVENTS, type ServerEvents, type SessionRecord } from './server-events.js';
import { applySocketPermissions, bindOwnerOnly, type SocketPermissions } from './socket-permissions.js';
import type { TlsSettings } from './tls-credentials.js';

/** How long stop() lets queued replies drain before it drops the sockets. */
const SHUTDOWN_GRACE_MS = 2000;

/** sun_path holds 108 bytes including the terminating NUL; Node would silently cut longer paths. */
export const MAX_UNIX_PATH_BYTES = 107;

export type ListenAddress =
  | { readonly kind: 'tcp'; readonly host: string; readonly port: number }
  | { readonly kind: 'unix'; readonly path: string }
  /**
   * A listening socket passed by systemd (socket-activation.ts), served as it is. listen()
   * returns the tcp or unix address it turns out to be, or this when that cannot be told.
   */
  | { readonly kind: 'inherited'; readonly fd: number; readonly name?: string };

/**
 * What the listeners of one server share: the admission policy (so the connection cap counts
 * every listener's connections) and the connection numbers (unique in the logs).
 */
export class ListenerGroup {
  readonly admission: Admission;
  /** Connections open on every listener of the group. */
  open = 0;
  #nextId = 1;

  constructor(policy: AdmissionPolicy, log: Logger, events: ServerEvents = NO_EVENTS) {
    this.admission = new Admission(policy, log, events);
  }

  nextId(): number {
    return this.#nextId++;
  }
}

export interface NbdListenerOptions {
  readonly registry: ExportRegistry;
  readonly log: Logger;
  readonly limits: ConnectionLimits;
  /** Bytes buffered for clients, shared by every connection (and every listener of a server). */
  readonly budget: MemoryBudget;
  readonly tls: TlsSettings;
  /** Who may connect (TCP allow list) and how many at once; absent: anyone, no cap. Unused with `group`. */
  readonly admission?: AdmissionPolicy;
  /** Shared with the server's other listeners; absent: this listener alone, under `admission`. */
  readonly group?: ListenerGroup;
  /** Mode and group of a unix socket file; absent: as the umask makes it. */
  readonly socketPermissions?: SocketPermissions;
  /** Where connections report what happens (logs, metrics); absent: nowhere. */
  readonly events?: ServerEvents;
  /** A worker's listener (workers.ts): it accepts on the socket its primary shares with every worker. */
  readonly shared?: SharedAccept;
  /** A worker's listener: how a connection moves to the worker holding its named overlay (hand-over.ts). */
  readonly handOver?: (socket: Socket, replay: Replay, owner: number) => void;
}

/** What a worker's listener knows of its siblings, and how it passes a connection to a less busy one. */
export interface SharedAccept {
  /** Connections open in the other workers, as last reported: the connection cap counts them too. */
  othersOpen(): number;
  /** The fewest connections open in one other worker (Infinity when there is none). */
  fewestElsewhere(): number;
  /** Send `socket` (unread) through the primary to a worker with fewer connections. */
  place(socket: Socket): void;
}

export class NbdListener {
  #server: Server;
  #connections = new Set<Connection>();
  /** Shared by every connection of this listener, so idle connections hold no buffers. */
  #buffers = new BufferPool();
  #options: NbdListenerOptions;
  #address: ListenAddress | null = null;
  #stopping: Promise<void> | null = null;
  #group: ListenerGroup;

  constructor(options: NbdListenerOptions) {
    this.#options = options;
    this.#group = options.group ?? new ListenerGroup(options.admission ?? {}, options.log, options.events ?? NO_EVENTS);
    // A worker's socket stays unread until it is known to be served here (it may be placed elsewhere).
    const pauseOnConnect = options.shared !== undefined;
    this.#server = createServer({ noDelay: true, allowHalfOpen: true, pauseOnConnect }, (socket) => this.#accept(socket));
  }

  /** The bound address (with the real port when 0 was asked for; an inherited socket's real address). */
  get address(): ListenAddress {
    if (this.#address === null) throw new Error('listener is not listening');
    return this.#address;
  }

  get connectionCount(): number {
    return this.#connections.size;
  }

  /** The connections open now, as the session list shows them. */
  sessions(): SessionRecord[] {
    return [...this.#connections].map((conn) => conn.record);
  }

  async listen(address: ListenAddress): Promise<ListenAddress> {
    if (address.kind === 'unix') checkUnixPath(address.path);
    try {
      return await this.#listenOnce(address);
    } catch (err) {
      // A unix socket file left by a server that died: nobody answers on it, so replace it.
      if (address.kind !== 'unix' || (err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err;
      if (!(await removeIfStale(address.path))) throw err;
      return this.#listenOnce(address);
    }
  }

  #listenOnce(address: ListenAddress): Promise<ListenAddress> {
    const permissions = this.#options.socketPermissions;
    /** The socket file's mode under the umask, the default when only a group is asked for. */
    let umaskMode = 0o777;
    return new Promise((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException): void => reject(describeListenError(err, address));
      this.#server.once('error', onError);
      const onListening = (): void => {
        this.#server.off('error', onError);
        this.#server.on('error', (err) => this.#options.log.error(`listener: ${err.message}`));
        if (address.kind === 'unix' && permissions !== undefined) {
          try {
            applySocketPermissions(address.path, permissions.mode ?? umaskMode, permissions.gid);
          } catch (err) {
            this.#server.close();
            reject(err);
            return;
          }
        }
        const bound = this.#server.address();
        this.#address =
          address.kind === 'inherited'
            ? resolveInherited(address, bound)
            : address.kind === 'tcp' && bound !== null && typeof bound === 'object'
              ? { kind: 'tcp', host: address.host, port: bound.port }
              : address;
        resolve(this.#address);
      };
      if (address.kind === 'inherited') this.#server.listen({ fd: address.fd }, onListening);
      else if (address.kind === 'tcp') this.#server.listen({ host: address.host, port: address.port }, onListening);
      else if (permissions === undefined) this.#server.listen({ path: address.path }, onListening);
      // Owner-only until the mode and group are set, so nobody connects in between.
      else umaskMode = bindOwnerOnly(() => this.#server.listen({ path: address.path }, onListening));
    });
  }

  /**
   * Accept on `handle`, the socket its primary bound at `address` and shares with every worker
   * (shared-socket.ts). The primary keeps the socket file and removes it.
   */
  listenShared(handle: object, address: ListenAddress): Promise<void> {
    this.#address = address;
    return new Promise((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException): void => reject(describeListenError(err, address));
      this.#server.once('error', onError);
      this.#server.listen(handle, () => {
        this.#server.off('error', onError);
        this.#server.on('error', (err) => this.#options.log.error(`listener: ${err.message}`));
        resolve();
      });
    });
  }

  /**
   * Serve `socket`, accepted by another worker on the listener at `address` and admitted there:
   * placed here by the primary, handed over for a named overlay (hand-over.ts) or relayed with TLS.
   */
  adopt(socket: Socket, address: ListenAddress, replay?: Replay): void {
    this.#address ??= address;
    // As the listener's own sockets are made (a socket received over IPC gets Node's defaults).
    socket.allowHalfOpen = true;
    socket.setNoDelay(true);
    // A socket a connection let go of (hand-over.ts) is paused: the new connection reads it.
    socket.resume();
    this.#serve(socket, replay);
  }

  /** Stop accepting, let every connection finish its in-flight requests, close everything. */
  stop(): Promise<void> {
    this.#stopping ??= this.#stop();
    return this.#stopping;
  }

  async #stop(): Promise<void> {
    // close() stops accepting at once. Its callback waits for every socket the server accepted,
    // and Node tracks one a worker passed to its primary (placed, or handed over for a named
    // overlay) until the primary reports it closed, which it never does once it has passed it
    // on: a worker's listener does not wait for it (its own connections are awaited below).
    const passesSockets = this.#options.shared !== undefined;
    const closedListener = new Promise<void>((resolve) => {
      this.#server.close(() => resolve());
      if (passesSockets) resolve();
    });
    const connections = [...this.#connections];
    await Promise.all(connections.map((conn) => conn.shutdown()));
    // A client that stopped reading would hold its socket open for ever: after a grace
    // period for the last replies to drain, drop whatever is left.
    let timer: NodeJS.Timeout | undefined;
    const grace = new Promise<void>((resolve) => {
      timer = setTimeout(resolve, SHUTDOWN_GRACE_MS);
    });
    await Promise.race([closedListener, grace]);
    clearTimeout(timer);
    for (const conn of connections) conn.destroy();
    await closedListener;
    this.#group.admission.flush();
    // A unix socket file this listener bound was removed by libuv as close() closed the handle,
    // at once (one systemd bound is not): removing its path again after the grace could delete a
    // newer server's socket, bound there meanwhile.
  }

  #accept(socket: Socket): void {
    if (this.#stopping !== null) {
      socket.destroy();
      return;
    }
    const shared = this.#options.shared;
    const open = this.#group.open + (shared?.othersOpen() ?? 0);
    if (!this.#group.admission.admit(socket, open, this.#address?.kind === 'tcp')) return;
    if (shared !== undefined) {
      // Busier than a sibling: the primary places it there (once; a placed socket is adopted).
      if (this.#group.open > shared.fewestElsewhere()) {
        shared.place(socket);
        return;
      }
      socket.resume();
    }
    this.#serve(socket);
  }

  #serve(socket: Socket, replay?: Replay): void {
    if (this.#stopping !== null) {
      socket.destroy();
      return;
    }
    const id = this.#group.nextId();
    const relayed = replay?.tls?.peer;
    const peer = relayed === undefined ? describePeer(socket, this.#address?.kind === 'tcp') : `${relayed}, relayed`;
    const conn = new Connection(socket, {
      registry: this.#options.registry,
      log: this.#options.log,
      limits: this.#options.limits,
      label: `conn ${id} (${peer})`,
      id,
      peer,
      events: this.#options.events ?? NO_EVENTS,
      buffers: this.#buffers,
      budget: this.#options.budget,
      tls: this.#options.tls,
      ...(this.#options.handOver !== undefined ? { handOver: this.#options.handOver } : {}),
      ...(replay !== undefined ? { replay } : {}),
    });
    this.#connections.add(conn);
    this.#group.open++;
    void conn.closed.then(() => {
      this.#connections.delete(conn);
      this.#group.open--;
    });
  }
}

export function describeListenError(err: NodeJS.ErrnoException, address: ListenAddress): Error {
  const where =
    address.kind === 'tcp'
      ? `${address.host}:${address.port}`
      : address.kind === 'unix'
        ? address.path
        : `inherited fd ${address.fd}${address.name === undefined ? '' : ` (${address.name})`}`;
  const cause =
    address.kind === 'inherited' && (err.code === 'EINVAL' || err.code === 'ENOTSOCK')
      ? 'not a listening stream socket (a datagram socket, or a connection from Accept=yes?)'
      : err.code === 'EADDRINUSE'
        ? 'address already in use'
        : err.code === 'EACCES'
          ? 'permission denied'
          : err.code === 'EADDRNOTAVAIL'
            ? 'address not available on this machine'
            : err.message;
  return Object.assign(new Error(`cannot listen on ${where}: ${cause}`), { code: err.code });
}

/** Refuse (ENAMETOOLONG) a unix socket path longer than sun_path holds, which Node would silently cut. */
export function checkUnixPath(path: string): void {
  if (Buffer.byteLength(path) <= MAX_UNIX_PATH_BYTES) return;
  throw Object.assign(new Error(`cannot listen on ${path}: socket path too long (over ${MAX_UNIX_PATH_BYTES} bytes)`), {
    code: 'ENAMETOOLONG',
  });
}

/** Remove the unix socket file at `path` if nobody answers on it (a server that died): whether it did. */
export async function removeIfStale(path: string): Promise<boolean> {
  const stats = await lstat(path).catch(() => null);
  if (stats?.isSocket() !== true || (await isSocketAlive(path))) return false;
  await unlink(path).catch(() => undefined);
  return true;
}

/** Whether something accepts connections on the unix socket at `path`. */
export function isSocketAlive(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = connect({ path });
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', (err: NodeJS.ErrnoException) => resolve(err.code !== 'ECONNREFUSED' && err.code !== 'ENOENT'));
  });
}
