// One worker of `serve --workers N` (workers.ts, doc/workers.md): the whole server for the
// connections it accepts. Its listeners do not bind (start-server.ts, `adopted`): each accepts on
// the socket the primary bound and sent over the IPC channel (shared-socket.ts), so a connection
// reaches the worker that accepts it with no hop through the primary. The worker reports its
// connection count (coalesced), and learns its siblings': the connection cap counts them all, and
// a worker busier than a sibling passes a new connection, unread, through the primary to the
// least busy one. A GO for a named overlay that a sibling holds sends the connection there too,
// with the handshake to replay (hand-over.ts). It answers the primary's requests for metrics and
// sessions.

import type { Socket } from 'node:net';
import type { ServerConfig } from '../config/server-config.js';
import type { Logger } from '../log.js';
import { type RunningServer, type ServerRuntime, startConfiguredServer } from '../start-server.js';
import { decodeReplay, encodeReplay, stopReading } from './hand-over.js';
import type { ListenAddress } from './listener.js';
import { NO_EVENTS, type ServerEvents } from './server-events.js';
import { toSessionJson } from './session-list.js';
import { StatusRelay } from './status-relay.js';
import { StatusServer } from './status-server.js';
import { relayTo, startRelayServer } from './worker-relay.js';
import type { FromWorker, ToWorker } from './workers.js';

/** How long a worker waits before it reports a changed connection count: one report for a burst. */
const COUNT_REPORT_MS = 5;

function tell(message: FromWorker, socket?: Socket): void {
  if (socket === undefined) {
    process.send?.(message);
    return;
  }
  stopReading(socket);
  process.send?.(message, socket, { keepOpen: false });
}

/** Read the listeners' addresses the primary put in the environment (workers.ts, WORKER_ENV). */
export function parseWorkerAddresses(json: string): ListenAddress[] {
  const parsed = JSON.parse(json) as unknown;
  if (!Array.isArray(parsed) || parsed.length === 0) throw new Error('worker: no listener addresses from the primary');
  return parsed as ListenAddress[];
}

/** Start serving as a worker: `adopted` are the primary's listener addresses (its connections say which by index). */
export async function serveAsWorker(
  config: ServerConfig,
  runtime: ServerRuntime & { readonly log: Logger },
  adopted: readonly ListenAddress[],
): Promise<RunningServer> {
  /** Sibling workers by pid: their relay sockets (worker-relay.ts). */
  let siblings = new Map<number, string>();
  /** Connections open in each sibling (not this worker), as the primary last told. */
  let loads = new Map<number, number>();
  const { log } = runtime;
  let reportTimer: NodeJS.Timeout | null = null;
  let reported = 0;
  const reportCount = (): void => {
    reportTimer ??= setTimeout(() => {
      reportTimer = null;
      // Connections come only once the server below has started and listens: it is set by then.
      const open = started.connectionCount;
      if (open === reported) return;
      reported = open;
      tell({ type: 'count', open });
    }, COUNT_REPORT_MS);
  };
  const counted: ServerEvents = { ...NO_EVENTS, connectionOpened: reportCount, connectionClosed: reportCount };
  // The primary's listeners, whatever this process's flags say (systemd's sockets went to the
  // primary). Metrics are kept here; the primary merges every process's ('status') for the
  // endpoint the workers serve (status-relay.ts).
  const served: ServerConfig = { ...config, listen: adopted.map((address) => ({ address })) };
  const started = await startConfiguredServer(served, {
    ...runtime,
    events: [...(runtime.events ?? []), counted],
    adopted,
    sharedAccept: (listener) => ({
      othersOpen: () => {
        let open = 0;
        for (const n of loads.values()) open += n;
        return open;
      },
      fewestElsewhere: () => {
        let fewest = Number.POSITIVE_INFINITY;
        for (const [pid, n] of loads) if (siblings.has(pid)) fewest = Math.min(fewest, n);
        return fewest;
      },
      place: (socket) => tell({ type: 'place', listener }, socket),
    }),
    siblingWorker: (pid) => siblings.has(pid),
    handOver: (listener, socket, replay, owner) => {
      if (replay.tls === undefined) {
        tell({ type: 'handover', listener, to: owner, replay: encodeReplay(replay) }, socket);
        return;
      }
      // TLS stays here: relay the plain bytes to the owner (worker-relay.ts).
      const path = siblings.get(owner);
      const failed = (why: string): void => {
        log.warn(`a TLS connection could not be relayed to worker ${owner}: ${why}`);
        socket.destroy();
      };
      if (path === undefined) failed('it is not a worker any more');
      else relayTo(path, socket, replay, { failed });
    },
  });
  // Relayed TLS connections from siblings, served as connections of the first listener.
  const relay = await startRelayServer((socket, replay) => {
    try {
      started.adopt(0, socket, replay);
    } catch (err) {
      socket.destroy();
      log.error(`worker: ${(err as Error).message}`);
    }
  }, log);
  // --metrics (status-relay.ts): served here, on the primary's socket, with every process's numbers.
  const statusRelay = new StatusRelay((request) => tell(request));
  let statusServer: StatusServer | null = null;
  const serveStatus = async (handle: object): Promise<void> => {
    if (config.metrics === undefined) throw new Error('no metrics endpoint is configured');
    statusServer = await StatusServer.start({ ...config.metrics, handle, source: statusRelay.source() });
  };
  const stopServer = started.stop;
  // The server first: it ends the relayed connections too, which the relay socket's close waits for.
  started.stop = async () => {
    if (reportTimer !== null) clearTimeout(reportTimer);
    await Promise.all([stopServer(), statusServer?.close()]);
    await relay.close();
  };
  process.on('message', (message: ToWorker, socket?: Socket) => {
    if (message?.type === 'siblings') {
      siblings = new Map(message.workers.filter((w) => w.pid !== process.pid).map((w) => [w.pid, w.relay]));
      return;
    }
    if (message?.type === 'loads') {
      loads = new Map(message.workers.filter((w) => w.pid !== process.pid).map((w) => [w.pid, w.open]));
      return;
    }
    if (message?.type === 'scraped') {
      statusRelay.answer(message);
      return;
    }
    if (message?.type === 'listen' && socket !== undefined) {
      // The primary's bound socket (shared-socket.ts): a handle, not a net.Socket.
      const { listener } = message;
      const listening = listener === 'status' ? serveStatus(socket) : started.listenShared(listener, socket);
      listening.then(
        () => tell({ type: 'listening', listener: message.listener }),
        (err: unknown) => {
          // A port taken between the primary's bind and this listen(): the primary says why it stops.
          tell({ type: 'failed', message: (err as Error).message });
          started.stop().finally(() => process.exit(1));
        },
      );
      return;
    }
    if (message?.type === 'status') {
      const now = Date.now();
      const sessions = started.sessions().map((record) => ({ ...toSessionJson(record, now), worker: process.pid }));
      started.metricsJson().then(
        (metrics) => tell({ type: 'status', id: message.id, metrics, sessions }),
        (err: unknown) => log.warn(`worker: metrics failed: ${String(err)}`),
      );
      return;
    }
    if (message?.type !== 'connection' || socket === undefined) return;
    try {
      started.adopt(message.listener, socket, message.replay === undefined ? undefined : decodeReplay(message.replay));
    } catch (err) {
      socket.destroy();
      log.error(`worker: ${(err as Error).message}`);
    }
  });
  // The primary is gone (killed): no connection can come any more, and nobody would replace
  // this worker or count its connections. Drain and exit, as on SIGTERM: no orphan holds locks.
  process.once('disconnect', () => {
    log.warn('worker: the primary process is gone: stopping');
    started.stop().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  });
  tell({ type: 'ready', relay: relay.path });
  return started;
}
