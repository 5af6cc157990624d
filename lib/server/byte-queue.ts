// A queue of received chunks. take(n) returns the next n bytes as a zero-copy subarray when
// they sit in one chunk and copies only when they span chunks (undici's `consume`);
// takeChunks(n) never copies: it returns them as the list of pieces they arrived in.

export class ByteQueue {
  #chunks: Buffer[] = [];
  /** Read position inside #chunks[0]. */
  #head = 0;
  #length = 0;

  get length(): number {
    return this.#length;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.#chunks.push(chunk);
    this.#length += chunk.length;
  }

  /**
   * Remove and return the next `n` bytes; the caller checked `length >= n`. When they span
   * chunks they are copied into `allocate(n)` (a pool, say); otherwise no copy is made.
   */
  take(n: number, allocate: (n: number) => Buffer = Buffer.allocUnsafe): Buffer {
    if (n > this.#length) throw new RangeError(`take(${n}) with only ${this.#length} bytes queued`);
    const first = this.#chunks[0];
    if (first === undefined || n === 0) return Buffer.alloc(0);
    const available = first.length - this.#head;
    if (n <= available) {
      const out = first.subarray(this.#head, this.#head + n);
      this.#advance(n);
      return out;
    }
    const out = allocate(n);
    let filled = 0;
    while (filled < n) {
      const chunk = this.#chunks[0] as Buffer; // filled < n <= #length, so a chunk remains
      const count = Math.min(chunk.length - this.#head, n - filled);
      chunk.copy(out, filled, this.#head, this.#head + count);
      filled += count;
      this.#advance(count);
    }
    return out;
  }

  /** Remove the next `n` bytes (the caller checked `length >= n`) as zero-copy pieces, in order. */
  takeChunks(n: number): Buffer[] {
    if (n > this.#length) throw new RangeError(`takeChunks(${n}) with only ${this.#length} bytes queued`);
    const out: Buffer[] = [];
    let taken = 0;
    while (taken < n) {
      const chunk = this.#chunks[0] as Buffer; // taken < n <= #length, so a chunk remains
      const count = Math.min(chunk.length - this.#head, n - taken);
      out.push(chunk.subarray(this.#head, this.#head + count));
      taken += count;
      this.#advance(count);
    }
    return out;
  }

  /** Drop up to `n` bytes without returning them; returns how many were dropped. */
  skip(n: number): number {
    let dropped = 0;
    while (dropped < n && this.#length > 0) {
      const chunk = this.#chunks[0] as Buffer; // #length > 0, so a chunk remains
      const count = Math.min(chunk.length - this.#head, n - dropped);
      this.#advance(count);
      dropped += count;
    }
    return dropped;
  }

  /** Drop everything (on close), releasing the chunks. */
  clear(): void {
    this.#chunks = [];
    this.#head = 0;
    this.#length = 0;
  }

  #advance(n: number): void {
    this.#head += n;
    this.#length -= n;
    const first = this.#chunks[0];
    if (first !== undefined && this.#head === first.length) {
      this.#chunks.shift();
      this.#head = 0;
    }
  }
}
