// What the run has seen so far: streams per class, mutation and ending, what the server did with
// them, the server's RSS and open files at each rest, the real-client checks, and every failure
// with the replay key that reproduces it.

import type { StreamResult } from './stream-runner.js';

export interface Failure {
  /** `seed:index` for FUZZ_REPLAY, or null for a failure no single stream owns. */
  readonly key: string | null;
  readonly what: string;
}

export interface RestSample {
  readonly streams: number;
  readonly rssKiB: number;
  readonly fds: number;
  /** The fuzzer's own open files: a leak there would end in EMFILE, blamed on nothing. */
  readonly fuzzerFds: number;
}

/** Failures kept in full; past this they are only counted (each kind keeps its first keys). */
const MAX_KEPT_FAILURES = 500;

function bump(map: Map<string, number>, key: string, by = 1): void {
  map.set(key, (map.get(key) ?? 0) + by);
}

export class Tally {
  streams = 0;
  bytesSent = 0;
  bytesReceived = 0;
  readonly classes = new Map<string, number>();
  /** Milliseconds each class's streams took, summed (its slot time). */
  readonly classMs = new Map<string, number>();
  readonly ops = new Map<string, number>();
  readonly endings = new Map<string, number>();
  /** What the server did: closed first, reset before the greeting, left our FIN unanswered. */
  readonly outcomes = new Map<string, number>();
  /** The first few streams of each outcome, to replay. */
  readonly outcomeKeys = new Map<string, string[]>();
  readonly rest: RestSample[] = [];
  clientChecksPassed = 0;
  clientChecksFailed = 0;
  failureCount = 0;
  readonly failures: Failure[] = [];

  add(result: StreamResult): void {
    const plan = result.plan;
    this.streams++;
    this.bytesSent += plan.bytes.length;
    this.bytesReceived += result.received;
    bump(this.classes, plan.streamClass);
    bump(this.classMs, plan.streamClass, result.ms);
    for (const op of plan.ops) bump(this.ops, op.replace(/:.*$/, ''));
    bump(this.endings, plan.ending);
    if (result.serverClosed) this.#outcome('server closed first', plan.key);
    if (result.closedBeforeGreeting)
      this.#outcome(`closed or reset before the greeting was read (${plan.streamClass})`, plan.key);
    if (result.finUnanswered) this.#outcome(`FIN/DISC not answered by a close in time (${plan.streamClass})`, plan.key);
    if (result.problem !== null) this.fail(plan.key, result.problem);
  }

  #outcome(outcome: string, key: string): void {
    bump(this.outcomes, outcome);
    const keys = this.outcomeKeys.get(outcome) ?? [];
    if (keys.length < 5) keys.push(key);
    this.outcomeKeys.set(outcome, keys);
  }

  fail(key: string | null, what: string): void {
    this.failureCount++;
    if (this.failures.length < MAX_KEPT_FAILURES) this.failures.push({ key, what });
  }

  clientCheck(ok: boolean): void {
    if (ok) this.clientChecksPassed++;
    else this.clientChecksFailed++;
  }
}
