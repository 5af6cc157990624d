// The listener: a net.Server on TCP or a unix socket that hands each accepted socket to a
// Connection, keeps track of them, and shuts down gracefully (stop accepting, let in-flight
// requests finish, close every device so ephemeral overlays are deleted).

import { lstat, unlink } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import type { Logger } from '../log.js';
import { Admission, type AdmissionPolicy, describePeer } from './admission.js';
import { BufferPool } from './buffer-pool.js';
import { Connection } from './connection.js';
import type { ConnectionLimits } from './connection-limits.js';
import type { ExportRegistry } from './exports.js';
import type { MemoryBudget } from './memory-budget.js';
import { NO_EVENTS, type ServerEvents, type SessionRecord } from './server-events.js';
import { applySocketPermissions, bindOwnerOnly, type SocketPermissions } from './socket-permissions.js';
import type { TlsSettings } from './tls-credentials.js';

/** How long stop() lets queued replies drain before it drops the sockets. */
const SHUTDOWN_GRACE_MS = 2000;

/** sun_path holds 108 bytes including the terminating NUL; Node would silently cut longer paths. */
const MAX_UNIX_PATH_BYTES = 107;

export type ListenAddress =
  | { readonly kind: 'tcp'; readonly host: string; readonly port: number }
  | { readonly kind: 'unix'; readonly path: string };

export interface NbdListenerOptions {
  readonly registry: ExportRegistry;
  readonly log: Logger;
  readonly limits: ConnectionLimits;
  /** Bytes buffered for clients, shared by every connection (and every listener of a server). */
  readonly budget: MemoryBudget;
  readonly tls: TlsSettings;
  /** Who may connect (TCP allow list) and how many at once; absent: anyone, no cap. */
  readonly admission?: AdmissionPolicy;
  /** Mode and group of a unix socket file; absent: as the umask makes it. */
  readonly socketPermissions?: SocketPermissions;
  /** Where connections report what happens (logs, metrics); absent: nowhere. */
  readonly events?: ServerEvents;
}

export class NbdListener {
  #server: Server;
  #connections = new Set<Connection>();
  /** Shared by every connection of this listener, so idle connections hold no buffers. */
  #buffers = new BufferPool();
  #options: NbdListenerOptions;
  #nextId = 1;
  #address: ListenAddress | null = null;
  #stopping: Promise<void> | null = null;
  #admission: Admission;

  constructor(options: NbdListenerOptions) {
    this.#options = options;
    this.#admission = new Admission(options.admission ?? {}, options.log, options.events ?? NO_EVENTS);
    this.#server = createServer({ noDelay: true, allowHalfOpen: true }, (socket) => this.#accept(socket));
  }

  /** The bound address (with the real port when 0 was asked for). */
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
    if (address.kind === 'unix' && Buffer.byteLength(address.path) > MAX_UNIX_PATH_BYTES) {
      throw Object.assign(
        new Error(`cannot listen on ${address.path}: socket path too long (over ${MAX_UNIX_PATH_BYTES} bytes)`),
        { code: 'ENAMETOOLONG' },
      );
    }
    try {
      return await this.#listenOnce(address);
    } catch (err) {
      // A unix socket file left by a server that died: nobody answers on it, so replace it.
      if (address.kind !== 'unix' || (err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err;
      const stats = await lstat(address.path).catch(() => null);
      if (stats === null || !stats.isSocket() || (await isSocketAlive(address.path))) throw err;
      await unlink(address.path).catch(() => undefined);
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
          address.kind === 'tcp' && bound !== null && typeof bound === 'object'
            ? { kind: 'tcp', host: address.host, port: bound.port }
            : address;
        resolve(this.#address);
      };
      if (address.kind === 'tcp') this.#server.listen({ host: address.host, port: address.port }, onListening);
      else if (permissions === undefined) this.#server.listen({ path: address.path }, onListening);
      // Owner-only until the mode and group are set, so nobody connects in between.
      else umaskMode = bindOwnerOnly(() => this.#server.listen({ path: address.path }, onListening));
    });
  }

  /** Stop accepting, let every connection finish its in-flight requests, close everything. */
  stop(): Promise<void> {
    this.#stopping ??= this.#stop();
    return this.#stopping;
  }

  async #stop(): Promise<void> {
    const closedListener = new Promise<void>((resolve) => this.#server.close(() => resolve()));
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
    this.#admission.flush();
    if (this.#address?.kind === 'unix') await unlink(this.#address.path).catch(() => undefined);
  }

  #accept(socket: Socket): void {
    if (this.#stopping !== null) {
      socket.destroy();
      return;
    }
    if (!this.#admission.admit(socket, this.#connections.size, this.#address?.kind === 'tcp')) return;
    const id = this.#nextId++;
    const peer = describePeer(socket, this.#address?.kind === 'tcp');
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
    });
    this.#connections.add(conn);
    void conn.closed.then(() => this.#connections.delete(conn));
  }
}

function describeListenError(err: NodeJS.ErrnoException, address: ListenAddress): Error {
  const where = address.kind === 'tcp' ? `${address.host}:${address.port}` : address.path;
  const cause =
    err.code === 'EADDRINUSE'
      ? 'address already in use'
      : err.code === 'EACCES'
        ? 'permission denied'
        : err.code === 'EADDRNOTAVAIL'
          ? 'address not available on this machine'
          : err.message;
  return Object.assign(new Error(`cannot listen on ${where}: ${cause}`), { code: err.code });
}

/** Whether something accepts connections on the unix socket at `path`. */
function isSocketAlive(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = connect({ path });
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', (err: NodeJS.ErrnoException) => resolve(err.code !== 'ECONNREFUSED' && err.code !== 'ENOENT'));
  });
}
