// What one connection may hold and how long it may take, with the defaults: the knobs the CLI's
// flags and the Node API's `limits` set (the memory budget across connections: memory-budget.ts).

export interface ConnectionLimits {
  /** Requests in flight before the socket is paused (the Linux client sends up to 128). */
  readonly maxInFlight: number;
  /** Payload bytes held by in-flight requests before the socket is paused. */
  readonly maxInFlightBytes: number;
  /** Reply bytes queued in the socket before parsing pauses until 'drain'. */
  readonly maxQueuedReplyBytes: number;
  /** Largest option payload accepted; a bigger one is treated as an attack and closes. */
  readonly maxOptionLength: number;
  /** Options allowed before an export is chosen. */
  readonly maxOptions: number;
  /** From accept to transmission (TLS handshake included), or the connection is dropped. */
  readonly handshakeTimeoutMs: number;
  /**
   * While others wait for the memory budget, a connection whose unsent replies have not moved
   * for this long is dropped (memory-budget.ts).
   */
  readonly replyStallMs: number;
}

export const DEFAULT_LIMITS: ConnectionLimits = {
  maxInFlight: 128,
  maxInFlightBytes: 64 * 1024 * 1024,
  maxQueuedReplyBytes: 16 * 1024 * 1024,
  maxOptionLength: 64 * 1024,
  maxOptions: 256,
  // qemu-nbd's handshake limit (NBD_DEFAULT_HANDSHAKE_MAX_SECS).
  handshakeTimeoutMs: 10_000,
  replyStallMs: 5_000,
};
