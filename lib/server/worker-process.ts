// One worker of `serve --workers N` (workers.ts, doc/workers.md): the whole server for the
// connections its primary hands it. Its listeners never listen (start-server.ts, `adopted`): each
// socket arrives over the IPC channel, unread, with the number of the listener that accepted it,
// or from a sibling worker with the handshake to replay (hand-over.ts). The worker tells the
// primary when it is ready and each time a connection closes (the primary counts connections
// against the cap across all workers), and answers its requests for metrics and sessions. A GO for a named overlay that a sibling holds sends the
// connection there, through the primary (Node's IPC runs between parent and child only).

import type { Socket } from 'node:net';
import type { ServerConfig } from '../config/server-config.js';
import type { Logger } from '../log.js';
import { type RunningServer, type ServerRuntime, startConfiguredServer } from '../start-server.js';
import { decodeReplay, encodeReplay, isHandedOver } from './hand-over.js';
import type { ListenAddress } from './listener.js';
import { NO_EVENTS, type ServerEvents } from './server-events.js';
import { toSessionJson } from './session-list.js';
import { relayTo, startRelayServer } from './worker-relay.js';
import type { FromWorker, ToWorker } from './workers.js';

function tell(message: FromWorker, socket?: Socket): void {
  if (socket === undefined) {
    process.send?.(message);
    return;
  }
  // Stop the handle reading before it goes: Node drops what a sent handle reads until the other
  // side has it. (A client waits for its GO reply, so nothing should come; this is for one that
  // does not.) Node's own fields, as net.Socket sets them when it stops a handle itself.
  const handle = (socket as unknown as { _handle?: { reading?: boolean; readStop?: () => number } })._handle;
  if (handle?.reading === true && handle.readStop !== undefined) {
    handle.reading = false;
    handle.readStop();
  }
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
  const { log } = runtime;
  const closed: ServerEvents = {
    ...NO_EVENTS,
    connectionClosed: (_session, reason) => {
      // A connection that moved to another worker is not closed: the primary counts it there now.
      if (!isHandedOver(reason)) tell({ type: 'closed' });
    },
  };
  // The primary's listeners, whatever this process's flags say (systemd's sockets went to the
  // primary). Metrics are kept here and served by the primary, which asks for them ('status').
  const served: ServerConfig = { ...config, listen: adopted.map((address) => ({ address })) };
  const server = await startConfiguredServer(served, {
    ...runtime,
    events: [...(runtime.events ?? []), closed],
    adopted,
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
        tell({ type: 'closed' });
      };
      if (path === undefined) failed('it is not a worker any more');
      else relayTo(path, socket, replay, { connected: () => tell({ type: 'relayed', to: owner }), failed });
    },
  });
  // Relayed TLS connections from siblings, served as connections of the first listener.
  const relay = await startRelayServer((socket, replay) => {
    try {
      server.adopt(0, socket, replay);
    } catch (err) {
      socket.destroy();
      log.error(`worker: ${(err as Error).message}`);
    }
  }, log);
  const stopServer = server.stop;
  // The server first: it ends the relayed connections too, which the relay socket's close waits for.
  server.stop = async () => {
    await stopServer();
    await relay.close();
  };
  process.on('message', (message: ToWorker, socket?: Socket) => {
    if (message?.type === 'siblings') {
      siblings = new Map(message.workers.filter((w) => w.pid !== process.pid).map((w) => [w.pid, w.relay]));
      return;
    }
    if (message?.type === 'status') {
      const now = Date.now();
      const sessions = server.sessions().map((record) => ({ ...toSessionJson(record, now), worker: process.pid }));
      server.metricsJson().then(
        (metrics) => tell({ type: 'status', id: message.id, metrics, sessions }),
        (err: unknown) => log.warn(`worker: metrics failed: ${String(err)}`),
      );
      return;
    }
    if (message?.type !== 'connection' || socket === undefined) return;
    try {
      server.adopt(message.listener, socket, message.replay === undefined ? undefined : decodeReplay(message.replay));
    } catch (err) {
      socket.destroy();
      log.error(`worker: ${(err as Error).message}`);
      tell({ type: 'closed' });
    }
  });
  // The primary is gone (killed): no connection can come any more, and nobody would replace
  // this worker or count its connections. Drain and exit, as on SIGTERM: no orphan holds locks.
  process.once('disconnect', () => {
    log.warn('worker: the primary process is gone: stopping');
    server.stop().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  });
  tell({ type: 'ready', relay: relay.path });
  return server;
}
