// The fuzzer's randomness: one small seeded generator (sfc32) per stream, seeded from the run's
// seed and the stream's index, so `FUZZ_REPLAY=seed:index` rebuilds exactly the same stream.

/** Murmur3's 32-bit finalizer: spreads the bits of seed and index before sfc32 starts. */
function mix32(value: number): number {
  let x = value >>> 0;
  x = Math.imul(x ^ (x >>> 16), 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 13), 0xc2b2ae35);
  return (x ^ (x >>> 16)) >>> 0;
}

export class Rng {
  #a: number;
  #b: number;
  #c: number;
  #d = 1;

  constructor(seed: number, index: number) {
    const low = index >>> 0;
    const high = Math.floor(index / 0x100000000) >>> 0;
    this.#a = mix32(seed ^ 0x9e3779b9);
    this.#b = mix32(low ^ 0x7f4a7c15);
    this.#c = mix32(high ^ mix32(seed + low));
    for (let i = 0; i < 12; i++) this.u32(); // sfc32's own warm-up
  }

  /** A uniform 32-bit unsigned integer. */
  u32(): number {
    const t = (((this.#a + this.#b) | 0) + this.#d) | 0;
    this.#d = (this.#d + 1) | 0;
    this.#a = this.#b ^ (this.#b >>> 9);
    this.#b = (this.#c + (this.#c << 3)) | 0;
    this.#c = (this.#c << 21) | (this.#c >>> 11);
    this.#c = (this.#c + t) | 0;
    return t >>> 0;
  }

  /** A uniform integer in [0, n) (n ≥ 1, up to 2^32). */
  int(n: number): number {
    return Math.floor((this.u32() / 0x100000000) * n);
  }

  /** A uniform integer in [low, high], both included. */
  between(low: number, high: number): number {
    return low + this.int(high - low + 1);
  }

  chance(probability: number): boolean {
    return this.u32() / 0x100000000 < probability;
  }

  pick<T>(items: readonly T[]): T {
    const item = items[this.int(items.length)];
    if (item === undefined) throw new Error('pick from an empty list');
    return item;
  }

  /** One of `weighted`'s values, each as likely as its weight. */
  weighted<T>(weighted: readonly (readonly [T, number])[]): T {
    const total = weighted.reduce((sum, [, weight]) => sum + weight, 0);
    let roll = this.int(total);
    for (const [value, weight] of weighted) {
      if (roll < weight) return value;
      roll -= weight;
    }
    throw new Error('weighted pick from an empty list');
  }

  u64(): bigint {
    return (BigInt(this.u32()) << 32n) | BigInt(this.u32());
  }

  bytes(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) out[i] = this.u32() & 0xff;
    return out;
  }
}
