// Questions sent to another process over the IPC channel, each with an id of its own, and
// answered by a message that carries that id (workers-status.ts: the primary asking its workers;
// status-relay.ts: a worker asking its primary). An answer nobody waits for any more is dropped;
// no answer within the timeout, or a question that could not be sent, gives null.

export class PendingReplies<T> {
  readonly #timeoutMs: number;
  readonly #pending = new Map<number, (reply: T | null) => void>();
  #nextId = 1;

  constructor(timeoutMs: number) {
    this.#timeoutMs = timeoutMs;
  }

  /** Send a question with a fresh id (`send` calls `failed` if it cannot go); its answer, else null. */
  ask(send: (id: number, failed: () => void) => void): Promise<T | null> {
    const id = this.#nextId++;
    return new Promise((resolve) => {
      const settle = (reply: T | null): void => {
        clearTimeout(timer);
        this.#pending.delete(id);
        resolve(reply);
      };
      const timer = setTimeout(() => settle(null), this.#timeoutMs);
      this.#pending.set(id, settle);
      send(id, () => settle(null));
    });
  }

  /** The answer to question `id`. */
  answer(id: number, reply: T): void {
    this.#pending.get(id)?.(reply);
  }
}
