// Log lines for connections refused for one reason, at most one line per interval: a flood of
// connections (from outside the allow list, or past the connection cap) must not fill the disk.
// The first refusal of an interval is logged at once; those after it are counted and summed up
// in one line when the interval ends.

/** One line per second at most, like the kernel's rate-limited messages. */
export const REFUSAL_LOG_INTERVAL_MS = 1000;

export class RefusalLog {
  readonly #write: (line: string) => void;
  readonly #reason: string;
  readonly #intervalMs: number;
  /** Refusals since the last line, and the peer of the latest (for the summary line). */
  #suppressed = 0;
  #latestPeer = '';
  /** Set while an interval runs: the timer that ends it. */
  #timer: NodeJS.Timeout | null = null;

  constructor(options: { write: (line: string) => void; reason: string; intervalMs?: number }) {
    this.#write = options.write;
    this.#reason = options.reason;
    this.#intervalMs = options.intervalMs ?? REFUSAL_LOG_INTERVAL_MS;
  }

  /** Report one refused connection from `peer` (address:port). */
  refused(peer: string): void {
    if (this.#timer !== null) {
      this.#suppressed++;
      this.#latestPeer = peer;
      return;
    }
    this.#write(`refused a connection from ${peer}: ${this.#reason}`);
    this.#startInterval();
  }

  /** Write the pending count now and stop the timer (at shutdown). */
  flush(): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = null;
    this.#writeSummary();
  }

  #startInterval(): void {
    this.#timer = setTimeout(() => {
      this.#timer = null;
      // While a flood goes on, each summary starts the next interval: still one line per interval.
      if (this.#writeSummary()) this.#startInterval();
    }, this.#intervalMs);
    // Never keep the process alive just to print a count.
    this.#timer.unref();
  }

  /** Log the refusals counted since the last line; false when there were none. */
  #writeSummary(): boolean {
    if (this.#suppressed === 0) return false;
    this.#write(`refused ${this.#suppressed} more connection(s), the latest from ${this.#latestPeer}: ${this.#reason}`);
    this.#suppressed = 0;
    return true;
  }
}
