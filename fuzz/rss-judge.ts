// The server's RSS must not grow with the streams it has served. Sampled at rest after each
// batch. The first samples are warm-up (V8's heap finding its size, the READ buffer pool filling
// up to its 64 MiB); after that the floor, the lowest of the last FLOOR_WINDOW samples, must stay
// within the bound above the warm-up's highest sample.
// Why a floor: garbage not yet collected moves single samples by ±40 MiB (measured: 132 → 174 →
// 132 MiB at rest while heap snapshots, which collect first, stayed at 9 MB from 20,000 to
// 100,000 streams); a leak raises every sample, so it raises the floor too.
// Why 64 MiB by default: a leak of 64 bytes per stream, over a million streams, passes it; no
// state a closed connection may keep (a socket, an overlay map page, a buffer) is that small.

const KiB_PER_MiB = 1024;
const FLOOR_WINDOW = 5;

export interface RssSummary {
  readonly firstKiB: number;
  readonly lastKiB: number;
  readonly maxKiB: number;
  /** Highest warm-up sample, or null while warming up. */
  readonly baselineKiB: number | null;
  /** The last floor (lowest of the last samples). */
  readonly floorKiB: number;
  /** Least-squares slope after warm-up, in MiB per 100,000 streams, or null with fewer than 3 samples. */
  readonly slopeMiBPer100k: number | null;
}

interface Sample {
  readonly streams: number;
  readonly kib: number;
}

function slope(samples: readonly Sample[]): number | null {
  if (samples.length < 3) return null;
  const n = samples.length;
  const meanX = samples.reduce((sum, s) => sum + s.streams, 0) / n;
  const meanY = samples.reduce((sum, s) => sum + s.kib, 0) / n;
  let num = 0;
  let den = 0;
  for (const s of samples) {
    num += (s.streams - meanX) * (s.kib - meanY);
    den += (s.streams - meanX) ** 2;
  }
  return den === 0 ? 0 : ((num / den) * 100_000) / KiB_PER_MiB;
}

export class RssJudge {
  readonly #boundKiB: number;
  readonly #warmup: number;
  readonly #samples: Sample[] = [];
  #reported = false;

  /** `warmup` samples are warm-up; then a floor more than `boundMiB` over the warm-up's highest fails. */
  constructor(boundMiB: number, warmup: number) {
    this.#boundKiB = boundMiB * KiB_PER_MiB;
    this.#warmup = warmup;
  }

  /** Record a sample taken after `streams` streams; a problem (once per run) when the floor breaks the bound. */
  add(streams: number, kib: number): string | null {
    this.#samples.push({ streams, kib });
    const baseline = this.#baseline();
    if (baseline === null || this.#reported || this.#samples.length < this.#warmup + FLOOR_WINDOW) return null;
    const floor = this.#floor();
    if (floor <= baseline + this.#boundKiB) return null;
    this.#reported = true;
    const mib = (k: number): string => (k / KiB_PER_MiB).toFixed(1);
    return `server RSS grew: the lowest of the last ${FLOOR_WINDOW} samples at rest is ${mib(floor)} MiB after ${streams} streams, ${mib(floor - baseline)} MiB above the warm-up's highest (${mib(baseline)} MiB), more than the bound of ${mib(this.#boundKiB)} MiB`;
  }

  #baseline(): number | null {
    if (this.#samples.length < this.#warmup) return null;
    return Math.max(...this.#samples.slice(0, this.#warmup).map((s) => s.kib));
  }

  #floor(): number {
    return Math.min(...this.#samples.slice(-FLOOR_WINDOW).map((s) => s.kib));
  }

  summary(): RssSummary | null {
    const first = this.#samples[0];
    const last = this.#samples[this.#samples.length - 1];
    if (first === undefined || last === undefined) return null;
    return {
      firstKiB: first.kib,
      lastKiB: last.kib,
      maxKiB: Math.max(...this.#samples.map((s) => s.kib)),
      baselineKiB: this.#baseline(),
      floorKiB: this.#floor(),
      slopeMiBPer100k: slope(this.#samples.slice(this.#warmup)),
    };
  }
}
