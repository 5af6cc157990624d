// `serve --workers N` (doc/workers.md): the primary process. It binds every listener and shares
// each socket with every worker (shared-socket.ts), which accepts its own connections and runs
// the whole server for them (admission, handshake, TLS, exports, overlays): no connection passes
// through the primary on its way in. Workers report their connection counts; the primary tells
// each worker everyone's (the cap counts them all) and places the connections a busier worker
// passes on in the least busy one.
//
// Workers are this same program started again with NBD_COW_WORKER set: they read the same flags
// or configuration file, and accept on the sockets the primary shares (start-server.ts, adopted listeners).
// A worker that exits unasked loses its own connections only: the primary logs it, removes the
// throwaway overlays it left (their names carry its pid) and starts another. Stopping sends each
// worker SIGTERM (it drains as one process does) and waits for them; reload sends SIGHUP.
//
// A named overlay is open in one worker at a time (its lock file names the holder): a GO for it in
// another worker moves that connection to the holder through the primary (hand-over.ts), so every
// connection to EXPORT@NAME shares one device. --metrics is served by the workers on a socket
// bound here, with the numbers of every process merged here (status-relay.ts, workers-status.ts).
// A TLS connection stays in its worker, which relays it (worker-relay.ts).

import { type ChildProcess, fork } from 'node:child_process';
import { rm } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { dirname } from 'node:path';
import { sweepEphemeralOverlays } from '../block/cow-device.js';
import type { ServerConfig } from '../config/server-config.js';
import { DEFAULT_MAX_CONNECTIONS } from '../defaults.js';
import type { Logger } from '../log.js';
import { listenerPermissions } from './access-options.js';
import { validateConnectionLimit } from './admission.js';
import { type ReplayMessage, stopReading } from './hand-over.js';
import type { ListenAddress } from './listener.js';
import { newServerMetrics } from './new-metrics.js';
import type { SessionJson } from './session-list.js';
import { bindSharedSocket, type SharedSocket } from './shared-socket.js';
import { answerScrape, type ScrapeReply, type ScrapeRequest } from './status-relay.js';
import { formatUri } from './uri.js';
import { WORKER_ENV } from './worker-env.js';

/** Messages between the primary and a worker (a socket goes with 'connection', 'place' and 'handover', a bound socket with 'listen'). */
export type ToWorker =
  /** Accept on this bound socket, listener number `listener` (shared-socket.ts), or 'status': serve --metrics there (status-relay.ts). */
  | { readonly type: 'listen'; readonly listener: number | 'status' }
  /** The answer to a worker's 'scrape'. */
  | ScrapeReply
  /** Serve this socket: another worker accepted it (and began it, with `replay`). */
  | { readonly type: 'connection'; readonly listener: number; readonly replay?: ReplayMessage }
  /** Connections open in each worker, as they last reported (coalesced). */
  | { readonly type: 'loads'; readonly workers: readonly { readonly pid: number; readonly open: number }[] }
  /** Send your metrics (prom-client JSON) and sessions, for the primary's --metrics endpoint. */
  | { readonly type: 'status'; readonly id: number }
  /**
   * Every worker's pid and relay socket, sent to all whenever one starts: a named overlay's lock
   * held by one of them is reachable (hand-over.ts, worker-relay.ts).
   */
  | { readonly type: 'siblings'; readonly workers: readonly { readonly pid: number; readonly relay: string }[] };
export type FromWorker =
  /** Started; `relay` is its socket for relayed TLS connections. */
  | { readonly type: 'ready'; readonly relay: string }
  /** It accepts on listener `listener` (or serves --metrics) now. */
  | { readonly type: 'listening'; readonly listener: number | 'status' }
  /** Its --metrics endpoint asks for every process's numbers. */
  | ScrapeRequest
  /** It cannot serve (it exits): why. */
  | { readonly type: 'failed'; readonly message: string }
  /** Its connections open now (sent a little after a change: one report for a burst). */
  | { readonly type: 'count'; readonly open: number }
  /** Serve this unread socket in a less busy worker. */
  | { readonly type: 'place'; readonly listener: number }
  | {
      readonly type: 'status';
      readonly id: number;
      readonly metrics: readonly object[];
      readonly sessions: readonly SessionJson[];
    }
  /** Move this socket to worker `to`, which holds the named overlay its GO names (hand-over.ts). */
  | { readonly type: 'handover'; readonly listener: number; readonly to: number; readonly replay: ReplayMessage };

/**
 * V8's young generation at 1 MiB a half instead of 16: each worker's RSS stays smaller (1,000
 * writing connections over 2 workers: 292 MiB over the 3 processes before, 246 MiB with it), and
 * throughput did not drop (2 runs each of rand-read, rand-write, seq-write and 4-connection
 * workloads, 2026-12-02).
 */
const WORKER_V8_FLAGS = ['--max-semi-space-size=1'];

/** How long stop() waits for a worker to drain before it kills it. */
const STOP_GRACE_MS = 15_000;
/** A worker that dies sooner than this after its start is replaced only after a pause, doubled each time (up to the most). */
const QUICK_EXIT_MS = 10_000;
const RESPAWN_PAUSE_MS = 500;
const RESPAWN_PAUSE_MAX_MS = 30_000;

export interface WorkersOptions {
  readonly workers: number;
  readonly log: Logger;
  /** The program and arguments a worker runs: this process's own. */
  readonly script: string;
  readonly args: readonly string[];
  /** Overlay directories to sweep for a dead worker's throwaway overlays. */
  readonly overlayDirs: readonly string[];
}

export interface RunningWorkers {
  readonly uri: string;
  /** With metrics configured: where the primary serves them for every process; else null. */
  readonly metricsUri: string | null;
  readonly addresses: readonly ListenAddress[];
  /** Worker pids now. */
  readonly pids: readonly number[];
  reload(): void;
  stop(): Promise<void>;
}

interface Worker {
  child: ChildProcess;
  /** Its socket for relayed TLS connections, once it is ready. */
  relay: string | null;
  /** Its connections open, as it last reported, plus those placed in it since. */
  open: number;
  /** Listening on every socket: it may be sent connections. */
  ready: boolean;
  exited: Promise<void>;
}

/** How long the primary waits before it tells the workers changed counts: one message for a burst. */
const LOADS_BROADCAST_MS = 5;

/** Bind the listeners, start the workers, and let them accept until stop(). */
export async function startWorkers(config: ServerConfig, options: WorkersOptions): Promise<RunningWorkers> {
  const { log } = options;
  // Checked here too, so that a bad value stops the primary before any worker starts.
  validateConnectionLimit(config.maxConnections ?? DEFAULT_MAX_CONNECTIONS);
  const permissions = await Promise.all(config.listen.map((l) => listenerPermissions(l)));
  // The primary's own metrics (its process) go into the merged /metrics.
  const metrics = config.metrics === undefined ? null : await newServerMetrics();
  const workers: Worker[] = [];
  let stopping = false;
  let nextTurn = 0;

  // The ready worker with fewest open connections (other than `not`, if another is ready); ties in turn.
  const pick = (not?: Worker): Worker | undefined => {
    const ready = workers.filter((w) => w.ready && w.child.connected);
    const others = ready.filter((w) => w !== not);
    const live = others.length > 0 ? others : ready;
    if (live.length === 0) return undefined;
    nextTurn = (nextTurn + 1) % live.length;
    let best = live[nextTurn] as Worker;
    for (const w of live) if (w.open < best.open) best = w;
    return best;
  };

  // Give `worker` the connection on `socket`, accepted elsewhere; one it cannot take is dropped.
  const sendConnection = (worker: Worker | undefined, message: ToWorker, socket: Socket): void => {
    if (worker === undefined || stopping) {
      socket.destroy();
      return;
    }
    worker.open++;
    try {
      worker.child.send(message, socket, { keepOpen: false }, (err) => {
        if (err) socket.destroy();
      });
    } catch {
      socket.destroy();
    }
  };

  const sockets: SharedSocket[] = [];
  try {
    for (const [i, listen] of config.listen.entries()) sockets.push(await bindSharedSocket(listen.address, permissions[i]));
  } catch (err) {
    await Promise.all(sockets.map((socket) => socket.close()));
    throw err;
  }
  const addresses = sockets.map((socket) => socket.address);
  // --metrics: every worker serves it on this socket (status-relay.ts), with the numbers of all.
  let statusSocket: SharedSocket | null = null;
  if (config.metrics !== undefined) {
    try {
      statusSocket = await bindSharedSocket({ kind: 'tcp', ...config.metrics });
    } catch (err) {
      await Promise.all(sockets.map((socket) => socket.close()));
      throw Object.assign(new Error(`metrics endpoint: ${(err as Error).message}`), {
        code: (err as NodeJS.ErrnoException).code,
      });
    }
  }
  const shared: Array<[number | 'status', SharedSocket]> = [
    ...sockets.entries(),
    ...(statusSocket === null ? [] : [['status', statusSocket] as [number | 'status', SharedSocket]]),
  ];

  // Every worker learns every worker's count, a little after a change.
  let loadsTimer: NodeJS.Timeout | null = null;
  const broadcastLoads = (): void => {
    loadsTimer ??= setTimeout(() => {
      loadsTimer = null;
      const message: ToWorker = {
        type: 'loads',
        workers: workers.flatMap((w) =>
          w.child.pid === undefined || !w.child.connected ? [] : [{ pid: w.child.pid, open: w.open }],
        ),
      };
      for (const w of workers) if (w.child.connected) w.child.send(message, undefined, {}, () => undefined);
    }, LOADS_BROADCAST_MS);
  };

  // Pauses before replacing a worker that keeps dying at start (a broken file, a full disk), by slot.
  const pauses: number[] = [];
  const spawnWorker = (slot: number, replacing?: number): Promise<void> => {
    const startedAt = Date.now();
    const child = fork(options.script, [...options.args], {
      env: { ...process.env, [WORKER_ENV]: JSON.stringify(addresses) },
      execArgv: [...process.execArgv, ...WORKER_V8_FLAGS],
      stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
    });
    const worker: Worker = { child, relay: null, open: 0, ready: false, exited: Promise.resolve() };
    worker.exited = new Promise<void>((resolve) => {
      child.once('exit', (code, signal) => {
        const lost = worker.open;
        worker.open = 0;
        broadcastLoads();
        for (const dir of options.overlayDirs) void sweepEphemeralOverlays(dir).catch(() => undefined);
        // Its relay socket's private directory (worker-relay.ts), left behind by a worker that was killed.
        if (worker.relay !== null) void rm(dirname(worker.relay), { recursive: true, force: true }).catch(() => undefined);
        resolve();
        if (stopping) return;
        const quick = Date.now() - startedAt < QUICK_EXIT_MS;
        const pause = quick ? Math.min((pauses[slot] ?? RESPAWN_PAUSE_MS / 2) * 2, RESPAWN_PAUSE_MAX_MS) : 0;
        pauses[slot] = pause;
        log.warn(
          `worker ${child.pid} exited (${signal ?? `code ${code}`}): its ${lost} connection(s) were dropped; ` +
            `starting another${pause > 0 ? ` in ${pause / 1000} s` : ''}`,
        );
        setTimeout(() => {
          if (stopping) return;
          spawnWorker(slot, child.pid).catch((err: unknown) => log.error(`cannot start a worker: ${(err as Error).message}`));
        }, pause).unref();
      });
    });
    child.on('message', (msg: FromWorker, socket?: Socket) => {
      // A socket passed on: Node started reading it here; the client's next bytes are the receiver's.
      if (socket !== undefined) stopReading(socket);
      if (msg.type === 'count') {
        worker.open = msg.open;
        broadcastLoads();
      } else if (msg.type === 'place' && socket !== undefined) {
        // Never back to the worker that placed it: it did because a sibling has fewer, which the
        // counts here may not show yet (each is reported a few ms after a change).
        sendConnection(pick(worker), { type: 'connection', listener: msg.listener }, socket);
        broadcastLoads();
      } else if (msg.type === 'status') status?.answer(msg);
      else if (msg.type === 'scrape' && status !== null) {
        void answerScrape(msg, status.source()).then((reply) => {
          if (child.connected) child.send(reply, undefined, {}, () => undefined);
        });
      } else if (msg.type === 'handover' && socket !== undefined) moveConnection(msg, socket);
    });
    workers[slot] = worker;
    return new Promise<void>((resolve, reject) => {
      let listening = 0;
      let failure: string | null = null;
      const onMessage = (msg: FromWorker): void => {
        if (msg.type === 'failed') failure = msg.message;
        if (msg.type === 'ready') {
          worker.relay = msg.relay;
          // Its listeners accept from now on, on the sockets every worker shares.
          for (const [listener, socket] of shared) {
            child.send({ type: 'listen', listener } satisfies ToWorker, socket.handle as never, {}, () => undefined);
          }
        }
        if (msg.type !== 'listening' || ++listening < shared.length) return;
        child.off('message', onMessage);
        worker.ready = true;
        announceSiblings();
        broadcastLoads();
        if (replacing !== undefined) log.info(`worker ${child.pid} started, replacing ${replacing}`);
        resolve();
      };
      child.on('message', onMessage);
      void worker.exited.then(() => reject(new Error(failure ?? `worker ${child.pid} exited before it was ready`)));
    });
  };

  // A connection moves to the worker holding its named overlay.
  const moveConnection = (msg: Extract<FromWorker, { type: 'handover' }>, socket: Socket): void => {
    const to = workers.find((w) => w.child.pid === msg.to && w.child.connected);
    if (to === undefined || stopping) {
      log.warn(
        `a connection could not move to worker ${msg.to}, which holds its named overlay: ${stopping ? 'stopping' : 'it is gone'}`,
      );
      socket.destroy();
      return;
    }
    sendConnection(to, { type: 'connection', listener: msg.listener, replay: msg.replay }, socket);
  };

  // Every worker learns every ready worker's pid and relay socket (again whenever one is replaced).
  const announceSiblings = (): void => {
    const ready = workers.flatMap((w) =>
      w.relay === null || w.child.pid === undefined ? [] : [{ pid: w.child.pid, relay: w.relay }],
    );
    const message: ToWorker = { type: 'siblings', workers: ready };
    for (const w of workers) if (w.child.connected) w.child.send(message, undefined, {}, () => undefined);
  };

  const status =
    metrics === null ? null : new (await import('./workers-status.js')).WorkersStatus(metrics, () => workers.map((w) => w.child));

  const stop = async (): Promise<void> => {
    stopping = true;
    if (loadsTimer !== null) clearTimeout(loadsTimer);
    // The workers' copies of each socket keep it open until they have stopped accepting.
    await Promise.all(shared.map(([, socket]) => socket.close()));
    await Promise.all(
      workers.map(async (w) => {
        w.child.kill('SIGTERM');
        const timer = setTimeout(() => w.child.kill('SIGKILL'), STOP_GRACE_MS);
        await w.exited;
        clearTimeout(timer);
      }),
    );
  };

  try {
    await Promise.all(Array.from({ length: options.workers }, (_, slot) => spawnWorker(slot)));
    // Reachable from now on (a unix socket gets its path: shared-socket.ts).
    for (const [, socket] of shared) await socket.publish();
  } catch (err) {
    await stop();
    throw err;
  }
  const first = config.exports[0];
  const tlsRequired = config.tls?.mode === 'require' || first?.requireTls === true;
  return {
    uri: formatUri(addresses[0] as ListenAddress, first?.name ?? '', tlsRequired),
    addresses,
    metricsUri: statusSocket === null ? null : metricsUrl(statusSocket.address),
    get pids() {
      return workers.map((w) => w.child.pid ?? 0);
    },
    reload: () => {
      for (const w of workers) w.child.kill('SIGHUP');
    },
    stop,
  };
}

/** The metrics URL of the status socket as bound (the real port when 0 was asked). */
function metricsUrl(address: ListenAddress): string {
  if (address.kind !== 'tcp') throw new Error('the metrics endpoint is a TCP socket');
  const host = address.host.includes(':') ? `[${address.host}]` : address.host;
  return `http://${host}:${address.port}/metrics`;
}
