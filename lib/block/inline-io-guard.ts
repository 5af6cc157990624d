// When a small transfer may run inline (readSync/writeSync on the event loop) instead of in
// libuv's threadpool: while it is fast, i.e. while it hits the page cache.
//
// Handing each 4 KiB request to the threadpool costs more than the copy itself (futex wake-ups
// and context switches dominated a profile of a Node NBD server), so requests up to
// INLINE_MAX_BYTES run inline while they are fast. The guard of a file times every inline call
// and keeps a moving average: when the average passes SLOW_AVERAGE_MS (most calls miss the
// cache: a cold base, dirty-page throttling) or one call passes SLOW_CALL_MS (a slow disk), the
// file's I/O goes to the threadpool for COOL_DOWN_MS, after which it probes again. A single
// outlier (the process preempted on a busy machine) does not trip it: tripping on every 1 ms
// blip halved QD1 throughput here. So a cold base stalls the other connections for a handful
// of slow calls per cool-down period at most. NBD_COW_SYNC_IO=0 turns inline I/O off.

/** Largest transfer that may run inline. */
export const INLINE_MAX_BYTES = 64 * 1024;
/** A moving average of call times above this means the cache is being missed. */
const SLOW_AVERAGE_MS = 0.25;
/** One call above this is a slow disk: stop at once. */
const SLOW_CALL_MS = 10;
const COOL_DOWN_MS = 500;
/** Weight of the newest call in the moving average. */
const AVERAGE_WEIGHT = 1 / 8;

const inlineEnabled = process.env['NBD_COW_SYNC_IO'] !== '0';

export class InlineIoGuard {
  /** Moving average of inline call times, ms. */
  #averageMs = 0;
  /** performance.now() until which I/O goes to the threadpool; 0: inline allowed. */
  #threadpoolUntil = 0;

  /** Whether a transfer of `length` bytes may run inline now. */
  allows(length: number): boolean {
    if (!inlineEnabled || length > INLINE_MAX_BYTES) return false;
    if (this.#threadpoolUntil === 0) return true;
    if (performance.now() < this.#threadpoolUntil) return false;
    this.#threadpoolUntil = 0;
    return true;
  }

  /** Account one inline transfer begun at `start` (performance.now()); a slow one trips the guard. */
  record(start: number): void {
    const end = performance.now();
    const took = end - start;
    this.#averageMs += (took - this.#averageMs) * AVERAGE_WEIGHT;
    if (took > SLOW_CALL_MS || this.#averageMs > SLOW_AVERAGE_MS) {
      this.#threadpoolUntil = end + COOL_DOWN_MS;
      this.#averageMs = 0;
    }
  }
}
