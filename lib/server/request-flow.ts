// One connection's share of the server in transmission: the requests it has in flight, the
// payload bytes they hold, and the replies waiting in its socket, against its own limits
// (ConnectionLimits) and the server-wide memory budget (memory-budget.ts). connection.ts asks
// whether parsing must wait and reports each request's start and end; this keeps the budget's
// count of what the connection holds true.

import type { MemoryBudget } from './memory-budget.js';

export interface FlowLimits {
  readonly maxInFlight: number;
  readonly maxInFlightBytes: number;
  readonly maxQueuedReplyBytes: number;
}

export class RequestFlow {
  readonly #limits: FlowLimits;
  readonly #budget: MemoryBudget;
  #inFlight = 0;
  #inFlightBytes = 0;
  /** Bytes counted against the budget: payloads admitted and not finished, plus unsent replies. */
  #charged = 0;
  /** Too many reply bytes wait in the socket: parse nothing until it drains. */
  #waitingDrain = false;
  /** The callback of a request waiting in the budget's line, to leave it. */
  #waiting: (() => void) | null = null;

  constructor(limits: FlowLimits, budget: MemoryBudget) {
    this.#limits = limits;
    this.#budget = budget;
  }

  /** Requests started and not yet answered. */
  get inFlight(): number {
    return this.#inFlight;
  }

  /** Whether the next request must wait: the in-flight caps, or replies not drained. */
  get mustWait(): boolean {
    const limits = this.#limits;
    return this.#inFlight >= limits.maxInFlight || this.#inFlightBytes >= limits.maxInFlightBytes || this.#waitingDrain;
  }

  /**
   * Take `bytes` (a READ's reply, a WRITE's payload) from the budget now (true), or join its line
   * (false): `granted` runs once they are taken. Either way they count as this connection's.
   */
  reserve(bytes: number, granted: () => void): boolean {
    if (this.#budget.tryTake(bytes)) {
      this.#admitted(bytes);
      return true;
    }
    const onGranted = (): void => {
      this.#waiting = null;
      this.#admitted(bytes);
      granted();
    };
    this.#waiting = onGranted;
    this.#budget.wait(bytes, onGranted);
    return false;
  }

  #admitted(bytes: number): void {
    this.#charged += bytes;
    this.#inFlightBytes += bytes;
  }

  /** Leave the budget's line: the waiting request will never be served (the connection closes). */
  cancelReservation(): void {
    if (this.#waiting === null) return;
    this.#budget.cancel(this.#waiting);
    this.#waiting = null;
  }

  /** A request was dispatched. */
  started(): void {
    this.#inFlight++;
  }

  /** A request holding `bytes` of payload was answered; `queued` bytes now wait in the socket. */
  finished(bytes: number, queued: number): void {
    this.#inFlight--;
    this.#inFlightBytes -= bytes;
    this.recount(queued);
  }

  /** Replies were written: wait for 'drain' when more than the cap is queued. */
  written(queued: number): void {
    if (queued > this.#limits.maxQueuedReplyBytes) this.#waitingDrain = true;
  }

  /** The socket drained. */
  drained(queued: number): void {
    this.#waitingDrain = false;
    this.recount(queued);
  }

  /**
   * Count against the budget what the connection holds now: in-flight payloads and the `queued`
   * reply bytes its socket has not written (a reply's bytes count until the client takes them).
   */
  recount(queued: number): void {
    const holding = this.#inFlightBytes + queued;
    if (holding === this.#charged) return;
    this.#budget.adjust(holding - this.#charged);
    this.#charged = holding;
  }

  /** The connection is gone: give back everything it held. */
  releaseAll(): void {
    this.cancelReservation();
    this.#budget.adjust(-this.#charged);
    this.#charged = 0;
    this.#inFlightBytes = 0;
  }
}
