// --metrics with --workers N: the primary serves /metrics and /sessions for every process. Each
// scrape asks every worker for its metrics (prom-client's JSON) and sessions over the IPC
// channel, merges the metrics with prom-client's AggregatorRegistry (counters and gauges summed
// over the processes, the primary's own included: its admission refusals, its memory and CPU)
// and lists every worker's sessions, each with the worker's pid. A worker that does not answer
// within the timeout is left out of that scrape.

import type { ChildProcess } from 'node:child_process';
import { AggregatorRegistry } from 'prom-client';
import type { ServerMetrics } from './metrics.js';
import { PendingReplies } from './pending-replies.js';
import type { SessionJson } from './session-list.js';
import type { StatusSource } from './status-server.js';

/** A worker's answer to { type: 'status' } (workers.ts FromWorker). */
export interface WorkerStatusReply {
  readonly id: number;
  readonly metrics: readonly object[];
  readonly sessions: readonly SessionJson[];
}

/** How long a scrape waits for a worker's answer. */
const ANSWER_TIMEOUT_MS = 2000;

export class WorkersStatus {
  readonly #primary: ServerMetrics;
  readonly #workers: () => readonly ChildProcess[];
  readonly #replies: PendingReplies<WorkerStatusReply>;

  constructor(primary: ServerMetrics, workers: () => readonly ChildProcess[], timeoutMs = ANSWER_TIMEOUT_MS) {
    this.#primary = primary;
    this.#workers = workers;
    this.#replies = new PendingReplies(timeoutMs);
  }

  /** A worker's 'status' message: the answer to one of our questions (a late or unknown one is dropped). */
  answer(reply: WorkerStatusReply): void {
    this.#replies.answer(reply.id, reply);
  }

  /** /metrics and /sessions over the primary and every worker that answers. */
  source(): StatusSource {
    return {
      metrics: async () => {
        const [own, replies] = await Promise.all([this.#primary.json(), this.#gather()]);
        const registry = AggregatorRegistry.aggregate([own, ...replies.map((r) => r.metrics)]);
        return { contentType: registry.contentType, text: await registry.metrics() };
      },
      sessions: async () => (await this.#gather()).flatMap((r) => r.sessions),
    };
  }

  async #gather(): Promise<WorkerStatusReply[]> {
    const replies = await Promise.all(this.#workers().map((child) => this.#ask(child)));
    return replies.filter((r): r is WorkerStatusReply => r !== null);
  }

  #ask(child: ChildProcess): Promise<WorkerStatusReply | null> {
    if (!child.connected) return Promise.resolve(null);
    return this.#replies.ask((id, failed) =>
      child.send({ type: 'status', id }, undefined, {}, (err) => {
        if (err) failed();
      }),
    );
  }
}
