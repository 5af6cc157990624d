// Start a server from a ServerConfig (a configuration file, or the command line's one export):
// check everything that can be checked, open the exports, bind every listener, give up root,
// then serve metrics. reload() applies a new configuration's exports to the running server.

import type { Socket } from 'node:net';
import { resolve } from 'node:path';
import type { MetricObjectWithValues, MetricValue } from 'prom-client';
import type { ExportConfig, ServerConfig } from './config/server-config.js';
import { DEFAULT_BUFFER_MEMORY, DEFAULT_MAX_CONNECTIONS, defaultOverlayDir } from './defaults.js';
import type { Logger } from './log.js';
import { MAX_PAYLOAD } from './protocol/constants.js';
import { AccessList } from './server/access-list.js';
import { listenerPermissions } from './server/access-options.js';
import { validateConnectionLimit } from './server/admission.js';
import { ConfiguredExports, type ReloadSummary } from './server/configured-exports.js';
import { type ConnectionLimits, DEFAULT_LIMITS } from './server/connection-limits.js';
import type { Replay } from './server/hand-over.js';
import { type ListenAddress, ListenerGroup, NbdListener, type SharedAccept } from './server/listener.js';
import { MemoryBudget } from './server/memory-budget.js';
import { newServerMetrics } from './server/new-metrics.js';
import { dropPrivileges, privilegeTarget } from './server/privileges.js';
import { combineEvents, type ServerEvents, type SessionRecord } from './server/server-events.js';
import { localStatus, StatusServer } from './server/status-server.js';
import { loadTlsSettings } from './server/tls-credentials.js';
import { formatUri } from './server/uri.js';

/** What a ServerConfig does not say: where logs go, who else observes, connection limits. */
export interface ServerRuntime {
  readonly log: Logger;
  readonly events?: readonly ServerEvents[];
  readonly limits?: Partial<ConnectionLimits>;
  /**
   * A worker (workers.ts): the addresses its primary bound, one per configured listener. The
   * listeners are made but do not bind: listenShared() accepts on the primary's sockets, and
   * adopt() serves the sockets other workers pass on.
   */
  readonly adopted?: readonly ListenAddress[];
  /** A worker's, per listener: its siblings' connection counts, and how to place a connection in a less busy one. */
  readonly sharedAccept?: (listener: number) => SharedAccept;
  /** A worker's: whether a pid is a sibling worker (hand-over.ts). */
  readonly siblingWorker?: (pid: number) => boolean;
  /** A worker's: move a connection accepted on listener `listener` to worker `owner`, which holds its named overlay. */
  readonly handOver?: (listener: number, socket: Socket, replay: Replay, owner: number) => void;
}

export interface RunningServer {
  /** The NBD URI of the first export on the first listener, e.g. nbd://127.0.0.1:10809/golden. */
  readonly uri: string;
  /** The first listener's address (with the real port when 0 was asked for). */
  readonly address: ListenAddress;
  /** Every listener's address, in the configuration's order. */
  readonly addresses: readonly ListenAddress[];
  /** The first export's name and overlay directory. */
  readonly exportName: string;
  readonly overlayDir: string;
  readonly connectionCount: number;
  /** Bytes clients hold in the server now: payloads in flight and replies not yet read. */
  readonly bufferedBytes: number;
  /** The connections open now: peer, export, overlay, TLS, requests and bytes. */
  sessions(): SessionRecord[];
  /** With metrics configured: where they are, e.g. http://127.0.0.1:9810/metrics (/sessions beside it); else null. */
  readonly metricsUri: string | null;
  /** With metrics configured: prom-client's JSON of them (a worker's, for its primary to merge); else []. */
  metricsJson(): Promise<MetricObjectWithValues<MetricValue<string>>[]>;
  /**
   * Serve `config`'s exports from now on: new exports appear, removed ones refuse new
   * connections while live ones go on, changed ones apply to new connections. Settings read
   * only at start (listeners, TLS, user, metrics, limits) are kept, with a warning when they
   * differ. On any error nothing changes and the error is thrown.
   */
  reload(config: ServerConfig): Promise<ReloadSummary>;
  /** Stop accepting, finish in-flight requests, delete ephemeral overlays, close (keep) named ones, release the bases. */
  stop(): Promise<void>;
  /** A worker's: serve `socket`, which another worker accepted on listener `index` (and began, with `replay`). */
  adopt(index: number, socket: Socket, replay?: Replay): void;
  /** A worker's: accept on `handle`, the socket its primary bound for listener `index` (shared-socket.ts). */
  listenShared(index: number, handle: object): Promise<void>;
}

export async function startConfiguredServer(config: ServerConfig, runtime: ServerRuntime): Promise<RunningServer> {
  const { log } = runtime;
  if (config.listen.length === 0) throw new Error('no listener is configured');
  const maxConnections = config.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
  validateConnectionLimit(maxConnections);
  const allow = config.allow === undefined ? undefined : new AccessList(config.allow);
  if (allow !== undefined && config.listen.some((l) => l.address.kind === 'unix')) {
    log.warn('the allow list applies to TCP clients only: clients of a unix socket are not checked');
  }
  const permissions = await Promise.all(config.listen.map((l) => listenerPermissions(l)));
  const target = await privilegeTarget(config.user, config.group);
  const bufferMemory = config.bufferMemory ?? DEFAULT_BUFFER_MEMORY;
  if (!Number.isSafeInteger(bufferMemory) || bufferMemory < MAX_PAYLOAD) {
    throw new Error(`buffer memory ${bufferMemory} is less than the largest request (${MAX_PAYLOAD} bytes)`);
  }
  const tls = await loadTlsSettings(config.tls);
  const metrics = config.metrics === undefined ? null : await newServerMetrics();
  const events = combineEvents([...(runtime.events ?? []), ...(metrics === null ? [] : [metrics])]);
  const exports = await ConfiguredExports.open(config.exports, {
    log,
    events,
    tlsMode: tls.mode,
    defaultOverlayDir: resolve(defaultOverlayDir(target?.uid)),
    privilegeTarget: target,
    ...(runtime.siblingWorker !== undefined ? { siblingWorker: runtime.siblingWorker } : {}),
  });
  metrics?.watchRemoteBases(() => exports.remoteBases());
  const listeners: NbdListener[] = [];
  let status: StatusServer | null = null;
  const stopAll = async (): Promise<void> => {
    await Promise.all([status?.close(), ...listeners.map((l) => l.stop())]);
    await exports.close();
  };
  try {
    const limits = { ...DEFAULT_LIMITS, ...handshakeLimit(config), ...runtime.limits };
    const budget = new MemoryBudget({ limit: bufferMemory, stallMs: limits.replyStallMs });
    const addresses: ListenAddress[] = [];
    // One connection cap and one numbering for every listener.
    const group = new ListenerGroup({ allow, maxConnections }, log, events);
    const handOver = runtime.handOver;
    for (const [i, listen] of config.listen.entries()) {
      const listener = new NbdListener({
        registry: exports.table,
        log,
        limits,
        budget,
        tls,
        group,
        ...(permissions[i] !== undefined ? { socketPermissions: permissions[i] } : {}),
        events,
        ...(runtime.sharedAccept !== undefined ? { shared: runtime.sharedAccept(i) } : {}),
        ...(handOver !== undefined
          ? { handOver: (socket: Socket, replay: Replay, owner: number) => handOver(i, socket, replay, owner) }
          : {}),
      });
      listeners.push(listener);
      const adopted = runtime.adopted?.[i];
      addresses.push(adopted ?? (await listener.listen(listen.address)));
    }
    // In the same turn as the last listen(): no client is accepted before the switch.
    if (target !== null) {
      const writable = exports.configs.filter((c) => !c.readOnly).map((c) => exports.overlayDirOf(c));
      dropPrivileges(target, writable);
      log.info(`running as ${target.who}`);
    }
    const sessions = (): SessionRecord[] => listeners.flatMap((l) => l.sessions());
    // After the switch: the HTTP parser never runs as root.
    if (config.metrics !== undefined && metrics !== null && runtime.adopted === undefined) {
      status = await StatusServer.start({ ...config.metrics, source: localStatus(metrics, sessions) });
    }
    // A worker's listener `index`, with the address its primary bound; undefined if there is none.
    const workerListener = (index: number): { listener: NbdListener; address: ListenAddress } | undefined => {
      const listener = listeners[index];
      const address = addresses[index];
      return runtime.adopted === undefined || listener === undefined || address === undefined ? undefined : { listener, address };
    };
    const first = config.exports[0] as ExportConfig;
    const firstAddress = addresses[0] as ListenAddress;
    let current = config;
    let stopping: Promise<void> | null = null;
    return {
      // Under TLS require only a TLS client gets in: the URI says so (as nbdkit's does).
      uri: formatUri(firstAddress, first.name, tls.mode === 'require' || first.requireTls),
      address: firstAddress,
      addresses,
      exportName: first.name,
      overlayDir: exports.overlayDirOf(first),
      get connectionCount() {
        return listeners.reduce((n, l) => n + l.connectionCount, 0);
      },
      get bufferedBytes() {
        return budget.used;
      },
      sessions,
      metricsUri: status === null ? null : `${status.url}/metrics`,
      metricsJson: () => metrics?.json() ?? Promise.resolve([]),
      reload: async (next) => {
        const summary = await exports.reload(next.exports);
        for (const setting of startOnlyChanges(current, next)) {
          log.warn(`reload: ${setting} changed; it applies at the next start`);
        }
        current = { ...current, exports: next.exports };
        return summary;
      },
      stop: () => {
        stopping ??= stopAll();
        return stopping;
      },
      adopt: (index, socket, replay) => {
        const target = workerListener(index);
        if (target === undefined) {
          socket.destroy();
          throw new Error(`no listener ${index} to adopt a connection on`);
        }
        target.listener.adopt(socket, target.address, replay);
      },
      listenShared: async (index, handle) => {
        const target = workerListener(index);
        if (target === undefined) throw new Error(`no listener ${index} to listen on`);
        await target.listener.listenShared(handle, target.address);
      },
    };
  } catch (err) {
    await stopAll();
    throw err;
  }
}

function handshakeLimit(config: ServerConfig): Partial<ConnectionLimits> {
  return config.handshakeTimeout === undefined ? {} : { handshakeTimeoutMs: config.handshakeTimeout * 1000 };
}

/** The settings read only at start that differ between `a` and `b`, by their configuration key. */
function startOnlyChanges(a: ServerConfig, b: ServerConfig): string[] {
  const keys: Array<[string, (c: ServerConfig) => unknown]> = [
    ['listen', (c) => c.listen],
    ['tls', (c) => c.tls],
    ['allow', (c) => c.allow],
    ['max-connections', (c) => c.maxConnections],
    ['handshake-timeout', (c) => c.handshakeTimeout],
    ['buffer-memory', (c) => c.bufferMemory],
    ['user', (c) => c.user],
    ['group', (c) => c.group],
    ['log', (c) => [c.logLevel, c.logFormat]],
    ['metrics', (c) => c.metrics],
  ];
  return keys.filter(([, get]) => JSON.stringify(get(a)) !== JSON.stringify(get(b))).map(([key]) => key);
}
