// One connected stream, driven by its plan: the pieces written with their pauses, what comes back
// counted (the greeting checked, nothing kept, so a 64 MiB READ reply costs nothing), then the
// stream ended as planned. Every wait here is bounded.

import type { Socket } from 'node:net';
import { setImmediate as nextTurn, setTimeout as sleep } from 'node:timers/promises';
import { IHAVEOPT, NBDMAGIC } from '../test/helpers/raw-nbd/wire.js';
import { disc } from './nbd-messages.js';
import type { StreamPlan } from './stream-plan.js';

export interface ProbeTimings {
  /** A plain stream must get the server's greeting within this (the server sends it at accept). */
  readonly greetingMs: number;
  /** After the last piece: stop reading once nothing came for this long… */
  readonly quietMs: number;
  /** …or once this much time has passed. */
  readonly windowMs: number;
  /** After our FIN (end, disc): how long to wait for the server's. */
  readonly closeWaitMs: number;
  /** await-drop: the server must close a stalled handshake within this. */
  readonly dropWaitMs: number;
}

/** How the stream went, from the client's side. */
export interface ProbeResult {
  readonly received: number;
  /** The server closed (FIN or reset) before we ended the stream. */
  readonly serverClosed: boolean;
  /** The server closed, or reset, before its greeting could be read (a reset drops unread bytes). */
  readonly closedBeforeGreeting: boolean;
  /** end/disc: the server had not closed closeWaitMs after our FIN. */
  readonly finUnanswered: boolean;
  /** Something the server must never do, or null. */
  readonly problem: string | null;
}

const GREETING = Buffer.alloc(18);
GREETING.writeBigUInt64BE(NBDMAGIC, 0);
GREETING.writeBigUInt64BE(IHAVEOPT, 8);
GREETING.writeUInt16BE(0x0003, 16); // FIXED_NEWSTYLE | NO_ZEROES

function ignore(): void {
  // A reset or EPIPE is one of the ways a fuzzed stream ends; `closed` records it.
}

/** Counts what the server sends and wakes waiters on every event. */
class Watcher {
  received = 0;
  head = Buffer.alloc(0);
  closed = false;
  readonly #waiters = new Set<() => void>();

  constructor(stream: Socket) {
    stream.on('data', (chunk: Buffer) => {
      if (this.head.length < GREETING.length) {
        this.head = Buffer.concat([this.head, chunk.subarray(0, GREETING.length - this.head.length)]);
      }
      this.received += chunk.length;
      this.#wake();
    });
    const gone = (): void => {
      this.closed = true;
      this.#wake();
    };
    stream.on('end', gone);
    stream.on('close', gone);
    stream.on('error', ignore);
  }

  /** True once `done()` holds, false if `ms` passed first. */
  until(done: () => boolean, ms: number): Promise<boolean> {
    if (done()) return Promise.resolve(true);
    return new Promise((resolve) => {
      const check = (): void => {
        if (!done()) return;
        clearTimeout(timer);
        this.#waiters.delete(check);
        resolve(true);
      };
      const timer = setTimeout(() => {
        this.#waiters.delete(check);
        resolve(false);
      }, ms);
      this.#waiters.add(check);
    });
  }

  #wake(): void {
    for (const waiter of [...this.#waiters]) waiter();
  }
}

/**
 * RST on a plain stream that is still open both ways. Node 20 gets two cases wrong, so these are
 * only destroyed: resetAndDestroy() after end() (which Node calls itself on the server's FIN)
 * leaks the descriptor, and on a socket node:tls has wrapped it crashes the process (SIGSEGV).
 */
function reset(stream: Socket, tcp: Socket): void {
  if (stream === tcp && !tcp.destroyed && !tcp.writableEnded && !tcp.readableEnded) tcp.resetAndDestroy();
  stream.destroy();
  tcp.destroy();
}

async function send(plan: StreamPlan, stream: Socket, watcher: Watcher): Promise<void> {
  let at = 0;
  for (let i = 0; i < plan.abortAfter; i++) {
    if (watcher.closed || stream.destroyed) return;
    const length = plan.pieces[i] ?? 0;
    stream.write(plan.bytes.subarray(at, at + length));
    at += length;
    if (plan.gap === 'immediate') await nextTurn();
    else if (plan.gap === 'timer') await sleep(1);
  }
}

async function readWindow(watcher: Watcher, timings: ProbeTimings): Promise<void> {
  const deadline = Date.now() + timings.windowMs;
  for (;;) {
    const before = watcher.received;
    await watcher.until(() => watcher.closed, timings.quietMs);
    if (watcher.closed || watcher.received === before || Date.now() >= deadline) return;
  }
}

function greetingProblem(watcher: Watcher, timings: ProbeTimings): string | null {
  if (watcher.received < GREETING.length) {
    return watcher.closed ? null : `no greeting within ${timings.greetingMs} ms (${watcher.received} bytes)`;
  }
  return watcher.head.equals(GREETING) ? null : `bad greeting ${watcher.head.toString('hex')}`;
}

/**
 * Run `plan` over `stream` (already set up for its transport); `tcp` is the TCP socket under it
 * (itself when not TLS), for resets; `expectGreeting` when the stream starts at the connect.
 */
export async function probe(
  plan: StreamPlan,
  stream: Socket,
  tcp: Socket,
  expectGreeting: boolean,
  timings: ProbeTimings,
): Promise<ProbeResult> {
  const watcher = new Watcher(stream);
  await send(plan, stream, watcher);
  if (plan.ending === 'abort') {
    reset(stream, tcp);
    return {
      received: watcher.received,
      serverClosed: watcher.closed,
      closedBeforeGreeting: false,
      finUnanswered: false,
      problem: null,
    };
  }
  let problem: string | null = null;
  let closedBeforeGreeting = false;
  if (expectGreeting) {
    await watcher.until(() => watcher.received >= GREETING.length || watcher.closed, timings.greetingMs);
    problem = greetingProblem(watcher, timings);
    closedBeforeGreeting = watcher.received < GREETING.length;
  }
  if (plan.ending === 'await-drop') {
    const dropped = await watcher.until(() => watcher.closed, timings.dropWaitMs);
    if (!dropped) problem ??= `a stalled handshake was still open after ${timings.dropWaitMs} ms`;
  } else {
    await readWindow(watcher, timings);
  }
  const serverClosed = watcher.closed;
  let finUnanswered = false;
  switch (plan.ending) {
    case 'reset':
      reset(stream, tcp);
      break;
    case 'end':
    case 'disc':
      if (!stream.destroyed) {
        if (plan.ending === 'disc') stream.write(disc());
        stream.end();
      }
      finUnanswered = !(await watcher.until(() => watcher.closed, timings.closeWaitMs));
      stream.destroy();
      break;
    default:
      stream.destroy();
  }
  return { received: watcher.received, serverClosed, closedBeforeGreeting, finUnanswered, problem };
}
