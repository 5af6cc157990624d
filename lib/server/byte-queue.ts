// A queue of received chunks. take(n) returns the next n bytes as a zero-copy subarray when
// they sit in one chunk and copies only when they span chunks (undici's `consume`);
// takeChunks(n) never copies: it returns them as the list of pieces they arrived in. A chunk
// pushed with pushVolatile() is a view of memory reused after the caller's turn
// (read-in-place.ts): what is taken from it is copied, and settle() copies what is left of it.

export class ByteQueue {
  #chunks: Buffer[] = [];
  /** Read position inside #chunks[0]. */
  #head = 0;
  #length = 0;
  /** The chunk pushVolatile() queued, until settle(). */
  #volatile: Buffer | null = null;

  get length(): number {
    return this.#length;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.#chunks.push(chunk);
    this.#length += chunk.length;
  }

  /** Queue a view of memory that will be reused: call settle() before the caller's turn ends. */
  pushVolatile(chunk: Buffer): void {
    this.push(chunk);
    if (chunk.length > 0) this.#volatile = chunk;
  }

  /** Copy what is still queued of the volatile chunk, so nothing queued points into reused memory. */
  settle(): void {
    const chunk = this.#volatile;
    if (chunk === null) return;
    this.#volatile = null;
    const at = this.#chunks.lastIndexOf(chunk);
    if (at < 0) return;
    this.#chunks[at] = Buffer.from(chunk.subarray(at === 0 ? this.#head : 0));
    if (at === 0) this.#head = 0;
  }

  /** Copy the next `dest.length` bytes into `dest` and remove them; the caller checked `length >= dest.length`. */
  takeInto(dest: Buffer): void {
    const n = dest.length;
    if (n > this.#length) throw new RangeError(`takeInto(${n}) with only ${this.#length} bytes queued`);
    let filled = 0;
    while (filled < n) {
      const chunk = this.#chunks[0] as Buffer; // filled < n <= #length, so a chunk remains
      const count = Math.min(chunk.length - this.#head, n - filled);
      chunk.copy(dest, filled, this.#head, this.#head + count);
      filled += count;
      this.#advance(count);
    }
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
    if (n <= available && first !== this.#volatile) {
      const out = first.subarray(this.#head, this.#head + n);
      this.#advance(n);
      return out;
    }
    const out = allocate(n);
    this.takeInto(out);
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
      const piece = chunk.subarray(this.#head, this.#head + count);
      out.push(chunk === this.#volatile ? Buffer.from(piece) : piece);
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
    this.#volatile = null;
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
