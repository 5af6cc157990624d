// Reusable large buffers: READ replies and WRITE payloads (lib/server/), fetched ranges of a
// remote base (lib/remote/http-origin.ts). A fresh 1 MiB Buffer costs
// page faults on first touch and garbage-collector work when it dies; a sequential 1 MiB
// workload allocates one per request. The pool keeps freed buffers in power-of-two size
// classes, up to a byte budget, and hands out exact-length views of them.
//
// Rule for callers: release a buffer only when nothing will read or write it again (a READ
// reply once the socket's write callback ran, a WRITE payload once the request is served).
// Large WRITE payloads on a plain socket are read straight into a buffer of the pool
// (read-in-place.ts); on a TLS socket they stay in the socket's own chunks (byte-queue.ts
// takeChunks) until the overlay has them.
// Buffers the pool did not make are ignored by release().

/** Below this, Node's own allocation is cheap enough (and small buffers are plentiful). */
export const POOL_MIN_BYTES = 64 * 1024;

export class BufferPool {
  readonly #maxBytes: number;
  readonly #maxClassBytes: number;
  /** Free backing stores per size class (class = log2 of the byte length). */
  readonly #free = new Map<number, ArrayBuffer[]>();
  /** Backing stores this pool made, so foreign buffers are never adopted. */
  readonly #ours = new WeakSet<ArrayBuffer>();
  /** Backing stores handed out and not yet released, so a double release is ignored. */
  readonly #lent = new WeakSet<ArrayBuffer>();
  #pooledBytes = 0;

  /** Keep at most `maxBytes` of free buffers; classes above `maxClassBytes` are never pooled. */
  constructor(maxBytes = 64 * 1024 * 1024, maxClassBytes = 32 * 1024 * 1024) {
    this.#maxBytes = maxBytes;
    this.#maxClassBytes = maxClassBytes;
  }

  /** Bytes held in free buffers right now. */
  get pooledBytes(): number {
    return this.#pooledBytes;
  }

  /** A buffer of exactly `length` bytes with unspecified contents. */
  acquire(length: number): Buffer {
    if (length < POOL_MIN_BYTES || length > this.#maxClassBytes) return Buffer.allocUnsafe(length);
    const sizeClass = Math.ceil(Math.log2(length));
    const store = this.#free.get(sizeClass)?.pop();
    let backing: ArrayBuffer;
    if (store !== undefined) {
      this.#pooledBytes -= store.byteLength;
      backing = store;
    } else {
      backing = new ArrayBuffer(2 ** sizeClass);
      this.#ours.add(backing);
    }
    this.#lent.add(backing);
    return Buffer.from(backing, 0, length);
  }

  /** Give a buffer from acquire() back; anything else is ignored. */
  release(buf: Buffer): void {
    const backing = buf.buffer;
    if (!(backing instanceof ArrayBuffer) || !this.#ours.has(backing) || !this.#lent.has(backing)) return;
    this.#lent.delete(backing);
    if (this.#pooledBytes + backing.byteLength > this.#maxBytes) return;
    const sizeClass = Math.log2(backing.byteLength);
    let list = this.#free.get(sizeClass);
    if (list === undefined) {
      list = [];
      this.#free.set(sizeClass, list);
    }
    list.push(backing);
    this.#pooledBytes += backing.byteLength;
  }
}
