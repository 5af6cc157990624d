// Tasks that run one after another, in the order they were queued; a task that fails rejects
// its own promise and the queue goes on with the next.

export class SerialQueue {
  /** Settles when the last queued task has; null when the queue is idle. */
  #tail: Promise<void> | null = null;

  run(task: () => Promise<void>): Promise<void> {
    const previous = this.#tail;
    const result = previous === null ? task() : previous.then(task);
    const settled = result.then(noop, noop);
    this.#tail = settled;
    void settled.then(() => {
      if (this.#tail === settled) this.#tail = null;
    });
    return result;
  }
}

function noop(): void {
  /* a failed task is reported to its own caller; the queue goes on */
}
