// One budget for the bytes the server buffers for its clients, across every connection: READ and
// WRITE payloads admitted and not yet answered, and replies waiting in a socket for the client to
// read them. Without it each connection could pin its own limits' worth (64 MiB in flight plus
// what it never reads), so N clients that never read pinned N times that.
//
// A connection takes bytes before it admits a READ or WRITE and gives them back as they are
// freed. When the budget is spent, the connection waits in line (first come, first served, so
// a large request is not overtaken for ever by small ones): its socket stays paused and the
// kernel's TCP window pushes back on its client. Replies a client never reads would hold their
// bytes for good, so while anyone waits, a watchdog drops the connections whose queued replies
// have made no progress for `stallMs`: a client that stops reading cannot starve the others.

/** A connection as the budget sees it: how much it holds, whether it is moving, how to drop it. */
export interface BudgetHolder {
  /** Bytes of replies waiting in its socket now (sampled by the watchdog). */
  queuedBytes(): number;
  /** Drop the connection (it stopped reading its replies while others wait for memory). */
  evict(reason: string): void;
}

interface Waiter {
  readonly bytes: number;
  readonly granted: () => void;
}

interface Progress {
  queued: number;
  since: number;
}

export interface MemoryBudgetOptions {
  /** Bytes all connections together may buffer. */
  readonly limit: number;
  /** While someone waits: drop a holder whose queued replies have not shrunk for this long. */
  readonly stallMs: number;
  /** How often the watchdog looks (default: a tenth of stallMs, at least 50 ms). */
  readonly checkMs?: number;
}

export class MemoryBudget {
  readonly limit: number;
  readonly #stallMs: number;
  readonly #checkMs: number;
  #used = 0;
  readonly #waiters: Waiter[] = [];
  readonly #holders = new Map<BudgetHolder, Progress>();
  #watchdog: NodeJS.Timeout | null = null;

  constructor(options: MemoryBudgetOptions) {
    this.limit = options.limit;
    this.#stallMs = options.stallMs;
    this.#checkMs = options.checkMs ?? Math.max(50, Math.floor(options.stallMs / 10));
  }

  /** Bytes taken now. */
  get used(): number {
    return this.#used;
  }

  /** Connections waiting for bytes. */
  get waiting(): number {
    return this.#waiters.length;
  }

  /** Take `bytes` if they fit and nobody is waiting in line before the caller. */
  tryTake(bytes: number): boolean {
    if (this.#waiters.length > 0 || this.#used + bytes > this.limit) return false;
    this.#used += bytes;
    return true;
  }

  /** Join the line for `bytes` (after tryTake said no): `granted` runs once they are taken for the caller. */
  wait(bytes: number, granted: () => void): void {
    this.#waiters.push({ bytes, granted });
    this.#startWatchdog();
  }

  /** Change what is taken by `delta` bytes, e.g. replies queued (+) or written (−); never refused. */
  adjust(delta: number): void {
    this.#used += delta;
    if (delta < 0) this.#grant();
  }

  /** Leave the line (the connection closed while waiting). */
  cancel(granted: () => void): void {
    const at = this.#waiters.findIndex((w) => w.granted === granted);
    if (at >= 0) this.#waiters.splice(at, 1);
    this.#grant();
  }

  /** Watch `holder` for stalls while it holds queued replies. */
  register(holder: BudgetHolder): void {
    this.#holders.set(holder, { queued: 0, since: 0 });
  }

  unregister(holder: BudgetHolder): void {
    this.#holders.delete(holder);
  }

  #grant(): void {
    while (this.#waiters.length > 0) {
      const head = this.#waiters[0] as Waiter; // length > 0
      if (this.#used + head.bytes > this.limit) return;
      this.#waiters.shift();
      this.#used += head.bytes;
      head.granted();
    }
    this.#stopWatchdog();
  }

  #startWatchdog(): void {
    if (this.#watchdog !== null) return;
    const now = performance.now();
    for (const [holder, progress] of this.#holders) {
      progress.queued = holder.queuedBytes();
      progress.since = now;
    }
    this.#watchdog = setInterval(() => this.#check(), this.#checkMs);
    this.#watchdog.unref();
  }

  #stopWatchdog(): void {
    if (this.#watchdog === null || this.#waiters.length > 0) return;
    clearInterval(this.#watchdog);
    this.#watchdog = null;
  }

  /** Drop the holders whose queued replies have not shrunk for stallMs while someone waits. */
  #check(): void {
    const now = performance.now();
    for (const [holder, progress] of this.#holders) {
      const queued = holder.queuedBytes();
      if (queued === 0 || queued < progress.queued) {
        progress.queued = queued;
        progress.since = now;
      } else if (now - progress.since >= this.#stallMs) {
        this.#holders.delete(holder);
        holder.evict(
          `its replies (${queued} bytes) have not been read for ${Math.round(this.#stallMs)} ms while others wait for memory`,
        );
      } else {
        progress.queued = queued;
      }
    }
    this.#stopWatchdog();
  }
}
