// One worker of `serve --workers N` (workers.ts, doc/workers.md): the whole server for the
// connections its primary hands it. Its listeners never listen (start-server.ts, `adopted`): each
// socket arrives over the IPC channel, unread, with the number of the listener that accepted it,
// or from a sibling worker with the handshake to replay (hand-over.ts). The worker tells the
// primary when it is ready and each time a connection closes (the primary counts connections
// against the cap across all workers). A GO for a named overlay that a sibling holds sends the
// connection there, through the primary (Node's IPC runs between parent and child only).

import type { Socket } from 'node:net';
import type { ServerConfig } from '../config/server-config.js';
import type { Logger } from '../log.js';
import { type RunningServer, type ServerRuntime, startConfiguredServer } from '../start-server.js';
import { decodeReplay, encodeReplay, isHandedOver } from './hand-over.js';
import type { ListenAddress } from './listener.js';
import { NO_EVENTS, type ServerEvents } from './server-events.js';
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
  let siblings = new Set<number>();
  const closed: ServerEvents = {
    ...NO_EVENTS,
    connectionClosed: (_session, reason) => {
      // A connection that moved to another worker is not closed: the primary counts it there now.
      if (!isHandedOver(reason)) tell({ type: 'closed' });
    },
  };
  // The primary's listeners, whatever this process's flags say (systemd's sockets went to the primary).
  const { metrics: _metrics, ...rest } = config;
  const served: ServerConfig = { ...rest, listen: adopted.map((address) => ({ address })) };
  const server = await startConfiguredServer(served, {
    ...runtime,
    events: [...(runtime.events ?? []), closed],
    adopted,
    siblingWorker: (pid) => siblings.has(pid),
    handOver: (listener, socket, replay, owner) =>
      tell({ type: 'handover', listener, to: owner, replay: encodeReplay(replay) }, socket),
  });
  process.on('message', (message: ToWorker, socket?: Socket) => {
    if (message?.type === 'siblings') {
      siblings = new Set(message.pids.filter((pid) => pid !== process.pid));
      return;
    }
    if (message?.type !== 'connection' || socket === undefined) return;
    try {
      server.adopt(message.listener, socket, message.replay === undefined ? undefined : decodeReplay(message.replay));
    } catch (err) {
      socket.destroy();
      runtime.log.error(`worker: ${(err as Error).message}`);
      tell({ type: 'closed' });
    }
  });
  tell({ type: 'ready' });
  return server;
}
