// One budget for the bytes the server buffers for its clients, across every connection: READ and
// WRITE payloads admitted and not yet answered, and replies waiting in a socket for the client to
// read them. Without it each connection could pin its own limits' worth (64 MiB in flight plus
// what it never reads), so N clients that never read pinned N times that.
//
// A connection takes bytes before it admits a READ or WRITE and gives them back as they are
// freed. When they do not fit, the connection waits in line, its socket paused (the kernel's TCP
// window pushes back on its client). The line is first fit: whatever fits is taken, in arrival
// order, and a request that fits is never held back by a larger one ahead of it. Strict first
// come, first served let 100 clients that never read, each waiting for 32 MiB, starve a client
// doing 4 KiB reads for minutes (bench/hostile.ts); first fit lets it through as soon as any room
// is left, at the cost that a large request can wait while small ones keep the budget busy.
// Replies a client never reads would hold their bytes for good, so while anyone waits, a watchdog
// drops the connections whose queued replies have made no progress for `stallMs`: a client that
// stops reading cannot keep memory others need.

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

  /** Take `bytes` if they fit (first fit: waiters for more than is free do not hold them back). */
  tryTake(bytes: number): boolean {
    if (this.#used + bytes > this.limit) return false;
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

  /** Grant every waiter that fits now, in arrival order. */
  #grant(): void {
    for (let i = 0; i < this.#waiters.length && this.#used < this.limit; ) {
      const waiter = this.#waiters[i] as Waiter; // i < length
      if (this.#used + waiter.bytes > this.limit) {
        i++;
        continue;
      }
      this.#waiters.splice(i, 1);
      this.#used += waiter.bytes;
      waiter.granted();
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
