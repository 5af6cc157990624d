// The checks on the server between batches, and what they need to blame a stream: each
// stream's local port (the server's log lines name the peer), the streams in flight when the
// process exited, a restart after a crash so the rest of the run goes on.

import { openFdCount } from '../bench/lib/proc.js';
import { within } from '../test/helpers/wait.js';
import { idleState } from './idle-state.js';
import { type ClientTarget, checkRealClients } from './real-clients.js';
import { log } from './report.js';
import type { RssJudge } from './rss-judge.js';
import { type LogCounts, type ServeOptions, type ServerUnderTest, startServer } from './server-under-test.js';
import type { Tally } from './tally.js';

/** Open files at rest may exceed the first rest's count by this much (timers, a late overlay close). */
const FD_SLACK = 16;
/** The fuzzer's own open files at rest may exceed its first count by this much. */
const FUZZER_FD_SLACK = 64;
/** Settling longer than this at rest means something is still held. */
const SETTLE_LIMIT_MS = 10_000;
/** Crashes after which the run stops instead of starting the server again. */
const MAX_RESTARTS = 3;
/** Log lines carry the peer as `conn N (127.0.0.1:PORT)`. */
const PEER_PORT = /\(127\.0\.0\.1:(\d+)\)/;

export class ServerWatch {
  #server: ServerUnderTest;
  readonly #options: ServeOptions;
  readonly #client: Omit<ClientTarget, 'port'>;
  readonly #tally: Tally;
  readonly #judge: RssJudge;
  readonly #ports = new Map<number, string>();
  readonly #inFlight = new Set<string>();
  #inFlightAtExit: string[] | null = null;
  #round = 0;
  #fdBaseline: number | null = null;
  #fuzzerFdBaseline: number | null = null;
  #restarts = 0;
  /** Log counts of the servers that exited (a restart starts counting from zero). */
  #earlierLogs: LogCounts = { info: 0, suppressed: 0 };

  private constructor(
    server: ServerUnderTest,
    options: ServeOptions,
    client: Omit<ClientTarget, 'port'>,
    tally: Tally,
    judge: RssJudge,
  ) {
    this.#server = server;
    this.#options = options;
    this.#client = client;
    this.#tally = tally;
    this.#judge = judge;
    this.#watchExit();
  }

  static async start(
    options: ServeOptions,
    client: Omit<ClientTarget, 'port'>,
    tally: Tally,
    judge: RssJudge,
  ): Promise<ServerWatch> {
    const server = await startServer(options);
    log(`server pid ${server.pid} on port ${server.port}: node ${server.args.join(' ')}`);
    return new ServerWatch(server, options, client, tally, judge);
  }

  get port(): number {
    return this.#server.port;
  }

  get pid(): number {
    return this.#server.pid;
  }

  /** The process has exited (streams failing now are not to blame); asked once per stream, so no /proc read. */
  get down(): boolean {
    return this.#server.hasExited();
  }

  /** Info lines and rate-limited lines of every server of the run. */
  logCounts(): LogCounts {
    const now = this.#server.logCounts();
    return { info: this.#earlierLogs.info + now.info, suppressed: this.#earlierLogs.suppressed + now.suppressed };
  }

  started(key: string): void {
    this.#inFlight.add(key);
  }

  connected(key: string, port: number): void {
    this.#ports.set(port, key);
  }

  ended(key: string): void {
    this.#inFlight.delete(key);
  }

  inFlight(): string[] {
    return [...this.#inFlight];
  }

  #watchExit(): void {
    const server = this.#server;
    void server.exited.then(() => {
      if (server === this.#server) this.#inFlightAtExit = [...this.#inFlight];
    });
  }

  /** Every stderr line above info level is a failure, blamed on its stream when the line names a known port. */
  #drainStderr(): void {
    for (const line of this.#server.takeLines()) {
      const port = PEER_PORT.exec(line)?.[1];
      const key = port === undefined ? null : (this.#ports.get(Number(port)) ?? null);
      this.#tally.fail(key, `server stderr: ${line.slice(0, 500)}`);
    }
  }

  /** The server exited: blame what was in flight, start it again (false once it crashed too often). */
  async #restart(): Promise<boolean> {
    const status = await within(this.#server.exited, 10_000, 'the server to exit');
    const inFlight = this.#inFlightAtExit ?? [];
    this.#tally.fail(
      null,
      `server exited (code ${status.code}, signal ${status.signal}) after ${this.#tally.streams} streams; log: ${this.#options.logFile}`,
    );
    for (const key of inFlight) this.#tally.fail(key, 'in flight when the server exited');
    if (++this.#restarts > MAX_RESTARTS) return false;
    this.#earlierLogs = this.logCounts();
    this.#server = await startServer(this.#options);
    this.#inFlightAtExit = null;
    this.#watchExit();
    log(`server restarted: pid ${this.#server.pid} on port ${this.#server.port}`);
    return true;
  }

  /**
   * Between batches: stderr, still alive (else restart), settled with no overlay or lock left,
   * open files and RSS within bounds, and real clients served. False when the run must stop.
   */
  async rest(): Promise<boolean> {
    this.#drainStderr();
    if (this.down || !this.#server.isAlive()) return this.#restart();
    const idle = await idleState(this.#server.pid, this.#options.overlayDir, SETTLE_LIMIT_MS);
    if (idle.leftovers.length > 0) {
      this.#tally.fail(
        null,
        `left in the overlay directory ${idle.settleMs} ms after every stream closed: ${idle.leftovers.slice(0, 10).join(' ')}`,
      );
    }
    this.#fdBaseline ??= idle.fds;
    if (idle.fds > this.#fdBaseline + FD_SLACK) {
      this.#tally.fail(
        null,
        `server holds ${idle.fds} open files at rest after ${this.#tally.streams} streams (${this.#fdBaseline} at the first rest)`,
      );
    }
    const rssProblem = this.#judge.add(this.#tally.streams, idle.rssKiB);
    if (rssProblem !== null) this.#tally.fail(null, rssProblem);
    const fuzzerFds = openFdCount(process.pid) ?? -1;
    this.#fuzzerFdBaseline ??= fuzzerFds;
    if (fuzzerFds > this.#fuzzerFdBaseline + FUZZER_FD_SLACK) {
      this.#tally.fail(
        null,
        `the fuzzer itself holds ${fuzzerFds} open files at rest (${this.#fuzzerFdBaseline} at the first): a leak in fuzz/`,
      );
    }
    this.#tally.rest.push({ streams: this.#tally.streams, rssKiB: idle.rssKiB, fds: idle.fds, fuzzerFds });
    for (const check of await checkRealClients({ ...this.#client, port: this.#server.port }, this.#round++)) {
      this.#tally.clientCheck(check.ok);
      if (!check.ok)
        this.#tally.fail(null, `real client ${check.name} failed after ${this.#tally.streams} streams: ${check.detail}`);
    }
    this.#drainStderr();
    this.#ports.clear();
    return this.down ? this.#restart() : true;
  }

  stop(): Promise<void> {
    return this.#server.stop();
  }
}
