// `serve --workers N` (doc/workers.md): the primary process. It binds every listener, admits
// connections (allow list and connection cap, counted over all workers) and hands each accepted
// socket, paused and unread, to the worker process with fewest open connections, which runs the
// whole server (handshake, TLS, exports, overlays) for it.
//
// Workers are this same program started again with NBD_COW_WORKER set: they read the same flags
// or configuration file, and serve what the primary sends (start-server.ts, adopted listeners).
// A worker that exits unasked loses its own connections only: the primary logs it, removes the
// throwaway overlays it left (their names carry its pid) and starts another. Stopping sends each
// worker SIGTERM (it drains as one process does) and waits for them; reload sends SIGHUP.
//
// A named overlay is open in one worker at a time (its lock file names the holder): a GO for it in
// another worker moves that connection to the holder through the primary (hand-over.ts), so every
// connection to EXPORT@NAME shares one device. --metrics is served here for every process
// (workers-status.ts). A TLS connection stays in its worker, which relays it (worker-relay.ts).

import { type ChildProcess, fork } from 'node:child_process';
import { rm } from 'node:fs/promises';
import type { Socket } from 'node:net';
import { dirname } from 'node:path';
import { sweepEphemeralOverlays } from '../block/cow-device.js';
import type { ServerConfig } from '../config/server-config.js';
import { DEFAULT_MAX_CONNECTIONS } from '../defaults.js';
import type { Logger } from '../log.js';
import { AccessList } from './access-list.js';
import { listenerPermissions } from './access-options.js';
import { validateConnectionLimit } from './admission.js';
import { DEFAULT_LIMITS } from './connection-limits.js';
import { ExportTable } from './export-table.js';
import type { ReplayMessage } from './hand-over.js';
import { type ListenAddress, ListenerGroup, NbdListener } from './listener.js';
import { MemoryBudget } from './memory-budget.js';
import { ServerMetrics } from './metrics.js';
import { NO_EVENTS } from './server-events.js';
import type { SessionJson } from './session-list.js';
import { StatusServer } from './status-server.js';
import { NO_TLS } from './tls-credentials.js';
import { formatUri } from './uri.js';
import { WORKER_ENV } from './worker-env.js';
import { WorkersStatus } from './workers-status.js';

/** Messages between the primary and a worker (a socket goes with 'connection' and 'handover'). */
export type ToWorker =
  | { readonly type: 'connection'; readonly listener: number; readonly replay?: ReplayMessage }
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
  | { readonly type: 'closed' }
  | {
      readonly type: 'status';
      readonly id: number;
      readonly metrics: readonly object[];
      readonly sessions: readonly SessionJson[];
    }
  /** A TLS connection is relayed to worker `to` from now on: the cap counts it there (its close comes from there). */
  | { readonly type: 'relayed'; readonly to: number }
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
  /** Connections handed to it and not closed yet: their `done` callbacks, oldest first. */
  readonly open: Array<() => void>;
  exited: Promise<void>;
}

/** Bind the listeners, start the workers, and hand them connections until stop(). */
export async function startWorkers(config: ServerConfig, options: WorkersOptions): Promise<RunningWorkers> {
  const { log } = options;
  const maxConnections = config.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
  validateConnectionLimit(maxConnections);
  const allow = config.allow === undefined ? undefined : new AccessList(config.allow);
  const permissions = await Promise.all(config.listen.map((l) => listenerPermissions(l)));
  // The primary's own metrics (admission refusals; its process) go into the merged /metrics.
  const metrics = config.metrics === undefined ? null : new ServerMetrics();
  const group = new ListenerGroup({ allow, maxConnections }, log, metrics ?? NO_EVENTS);
  const workers: Worker[] = [];
  let stopping = false;
  let nextTurn = 0;

  // The worker with fewest open connections; ties in turn.
  const pick = (): Worker => {
    const live = workers.filter((w) => w.child.connected);
    const pool = live.length > 0 ? live : workers;
    nextTurn = (nextTurn + 1) % pool.length;
    let best = pool[nextTurn] as Worker;
    for (const w of pool) if (w.open.length < best.open.length) best = w;
    return best;
  };

  const listeners = config.listen.map(
    (_, i) =>
      new NbdListener({
        // The primary never serves a connection: it forwards them all (no exports, buffers or TLS here).
        registry: new ExportTable([]),
        log,
        limits: DEFAULT_LIMITS,
        budget: new MemoryBudget({ limit: 0, stallMs: DEFAULT_LIMITS.replyStallMs }),
        tls: NO_TLS,
        group,
        ...(permissions[i] !== undefined ? { socketPermissions: permissions[i] } : {}),
        forward: (socket, done) => sendConnection(pick(), { type: 'connection', listener: i }, socket, done),
      }),
  );
  // Give `worker` the connection on `socket`, counted (`done`) as its own; one it cannot take is dropped.
  const sendConnection = (worker: Worker, message: ToWorker, socket: Socket, done: () => void): void => {
    worker.open.push(done);
    const drop = (): void => {
      socket.destroy();
      const at = worker.open.indexOf(done);
      if (at >= 0) worker.open.splice(at, 1);
      done();
    };
    try {
      worker.child.send(message, socket, { keepOpen: false }, (err) => {
        if (err) drop();
      });
    } catch {
      drop();
    }
  };

  const addresses: ListenAddress[] = [];
  try {
    for (const [i, listen] of config.listen.entries()) addresses.push(await (listeners[i] as NbdListener).listen(listen.address));
  } catch (err) {
    await Promise.all(listeners.map((l) => l.stop()));
    throw err;
  }

  // Pauses before replacing a worker that keeps dying at start (a broken file, a full disk), by slot.
  const pauses: number[] = [];
  const spawnWorker = (slot: number, replacing?: number): Promise<void> => {
    const startedAt = Date.now();
    const child = fork(options.script, [...options.args], {
      env: { ...process.env, [WORKER_ENV]: JSON.stringify(addresses) },
      execArgv: [...process.execArgv, ...WORKER_V8_FLAGS],
      stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
    });
    const worker: Worker = { child, relay: null, open: [], exited: Promise.resolve() };
    worker.exited = new Promise<void>((resolve) => {
      child.once('exit', (code, signal) => {
        const lost = worker.open.splice(0);
        for (const done of lost) done();
        for (const dir of options.overlayDirs) void sweepEphemeralOverlays(dir).catch(() => undefined);
        // Its relay socket's private directory (worker-relay.ts), left behind by a worker that was killed.
        if (worker.relay !== null) void rm(dirname(worker.relay), { recursive: true, force: true }).catch(() => undefined);
        resolve();
        if (stopping) return;
        const quick = Date.now() - startedAt < QUICK_EXIT_MS;
        const pause = quick ? Math.min((pauses[slot] ?? RESPAWN_PAUSE_MS / 2) * 2, RESPAWN_PAUSE_MAX_MS) : 0;
        pauses[slot] = pause;
        log.warn(
          `worker ${child.pid} exited (${signal ?? `code ${code}`}): its ${lost.length} connection(s) were dropped; ` +
            `starting another${pause > 0 ? ` in ${pause / 1000} s` : ''}`,
        );
        setTimeout(() => {
          if (stopping) return;
          spawnWorker(slot, child.pid).catch((err: unknown) => log.error(`cannot start a worker: ${(err as Error).message}`));
        }, pause).unref();
      });
    });
    child.on('message', (msg: FromWorker, socket?: Socket) => {
      if (msg.type === 'closed') worker.open.shift()?.();
      else if (msg.type === 'status') status?.answer(msg);
      else if (msg.type === 'handover' && socket !== undefined) moveConnection(worker, msg, socket);
      else if (msg.type === 'relayed') countElsewhere(worker, msg.to);
    });
    workers[slot] = worker;
    return new Promise<void>((resolve, reject) => {
      const onMessage = (msg: FromWorker): void => {
        if (msg.type !== 'ready') return;
        child.off('message', onMessage);
        worker.relay = msg.relay;
        announceSiblings();
        if (replacing !== undefined) log.info(`worker ${child.pid} started, replacing ${replacing}`);
        resolve();
      };
      child.on('message', onMessage);
      void worker.exited.then(() => reject(new Error(`worker ${child.pid} exited before it was ready`)));
    });
  };

  // A connection moves from `from` to the worker holding its named overlay; the cap counts it there now.
  const moveConnection = (from: Worker, msg: Extract<FromWorker, { type: 'handover' }>, socket: Socket): void => {
    const done = from.open.shift() ?? (() => undefined);
    const to = workers.find((w) => w.child.pid === msg.to && w.child.connected);
    if (to === undefined || stopping) {
      log.warn(
        `a connection could not move to worker ${msg.to}, which holds its named overlay: ${stopping ? 'stopping' : 'it is gone'}`,
      );
      socket.destroy();
      done();
      return;
    }
    sendConnection(to, { type: 'connection', listener: msg.listener, replay: msg.replay }, socket, done);
  };

  // A TLS connection relayed from `from` to worker `to`: its close will come from `to`.
  const countElsewhere = (from: Worker, to: number): void => {
    const done = from.open.shift();
    const owner = workers.find((w) => w.child.pid === to);
    if (done === undefined) return;
    if (owner === undefined) done();
    else owner.open.push(done);
  };

  // Every worker learns every ready worker's pid and relay socket (again whenever one is replaced).
  const announceSiblings = (): void => {
    const ready = workers.flatMap((w) =>
      w.relay === null || w.child.pid === undefined ? [] : [{ pid: w.child.pid, relay: w.relay }],
    );
    const message: ToWorker = { type: 'siblings', workers: ready };
    for (const w of workers) if (w.child.connected) w.child.send(message, undefined, {}, () => undefined);
  };

  const status = metrics === null ? null : new WorkersStatus(metrics, () => workers.map((w) => w.child));
  let statusServer: StatusServer | null = null;

  const stop = async (): Promise<void> => {
    stopping = true;
    await Promise.all([statusServer?.close(), ...listeners.map((l) => l.stop())]);
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
    if (config.metrics !== undefined && status !== null) {
      statusServer = await StatusServer.start({ ...config.metrics, source: status.source() });
    }
  } catch (err) {
    await stop();
    throw err;
  }
  const first = config.exports[0];
  const tlsRequired = config.tls?.mode === 'require' || first?.requireTls === true;
  return {
    uri: formatUri(addresses[0] as ListenAddress, first?.name ?? '', tlsRequired),
    addresses,
    metricsUri: statusServer === null ? null : `${statusServer.url}/metrics`,
    get pids() {
      return workers.map((w) => w.child.pid ?? 0);
    },
    reload: () => {
      for (const w of workers) w.child.kill('SIGHUP');
    },
    stop,
  };
}
