// The well-behaved client of bench/hostile.ts: one NbdSession reading 4 KiB at random offsets,
// one read at a time, checked against the base, for as long as the case runs. A failed session
// is replaced by a fresh one; a read still waiting when the case ends counts with its wait so far.

import type { ListenAddress } from '../../lib/server/listener.js';
import { NbdSession } from '../../test/helpers/raw-nbd/session.js';
import { sleep } from './proc.js';
import { baseBytes, errorText, percentile, round } from './workloads.js';

const READ_BYTES = 4096;
const UNFINISHED_MS = 100;

export interface NormalService {
  readonly reads: number;
  readonly seconds: number;
  readonly reads_per_s: number | null;
  readonly lat_p50_ms: number | null;
  readonly lat_p99_ms: number | null;
  readonly lat_max_ms: number | null;
  /** The longest time without a completed read (from the start, between reads, or to the end). */
  readonly longest_gap_ms: number | null;
  /** A read had been waiting 100 ms or more for its reply when the case ended (counted in the latencies). */
  readonly unfinished_at_end: boolean;
  /** Reads completed in each second of the case. */
  readonly reads_each_second: readonly number[];
  readonly sessions: number;
  readonly errors: number;
  readonly mismatches: number;
  readonly last_error: string | null;
}

export interface NormalReaderOptions {
  readonly address: ListenAddress;
  readonly exportName: string;
  readonly baseFd: number;
  readonly size: number;
  /** Bounds a connect and every read; longer than a case, so a stall shows as latency. */
  readonly timeoutMs: number;
}

export class NormalReader {
  readonly #options: NormalReaderOptions;
  readonly #latencies: number[] = [];
  readonly #perSecond: number[] = [];
  #session: NbdSession | null = null;
  #stopping = false;
  #sessions = 0;
  #errors = 0;
  #mismatches = 0;
  #lastError: string | null = null;
  #readStarted: number | null = null;
  #lastDone = 0;
  #longestGap = 0;
  #t0 = 0;
  #loop: Promise<void> = Promise.resolve();

  constructor(options: NormalReaderOptions) {
    this.#options = options;
  }

  start(): void {
    this.#t0 = performance.now();
    this.#lastDone = this.#t0;
    this.#loop = this.#run();
  }

  /** End the loop (dropping a read still waiting) and return what it measured. */
  async stop(): Promise<NormalService> {
    const end = performance.now();
    this.#stopping = true;
    // A read cut off by the end counts only if it had been waiting long: most were just sent.
    const started = this.#readStarted;
    const pending = started !== null && end - started >= UNFINISHED_MS ? started : null;
    if (pending !== null) this.#latencies.push(end - pending);
    this.#longestGap = Math.max(this.#longestGap, end - this.#lastDone);
    this.#session?.destroy();
    // A session still opening cannot be cut short; #open drops it when it arrives.
    await Promise.race([this.#loop, sleep(2000)]);
    const seconds = (end - this.#t0) / 1000;
    const reads = this.#latencies.length - (pending === null ? 0 : 1);
    const sorted = [...this.#latencies].sort((a, b) => a - b);
    return {
      reads,
      seconds: round(seconds, 2) ?? 0,
      reads_per_s: seconds > 0 ? round(reads / seconds) : null,
      lat_p50_ms: round(percentile(sorted, 50), 3),
      lat_p99_ms: round(percentile(sorted, 99), 3),
      lat_max_ms: round(sorted[sorted.length - 1], 1),
      longest_gap_ms: round(this.#longestGap, 1),
      unfinished_at_end: pending !== null,
      reads_each_second: Array.from({ length: Math.ceil(seconds) }, (_, i) => this.#perSecond[i] ?? 0),
      sessions: this.#sessions,
      errors: this.#errors,
      mismatches: this.#mismatches,
      last_error: this.#lastError,
    };
  }

  async #run(): Promise<void> {
    const { address, exportName, baseFd, size, timeoutMs } = this.#options;
    const slots = Math.floor(size / READ_BYTES);
    while (!this.#stopping) {
      try {
        this.#session ??= await this.#open(address, exportName, timeoutMs);
        const offset = Math.floor(Math.random() * slots) * READ_BYTES;
        const t = performance.now();
        this.#readStarted = t;
        const data = await this.#session.pread(READ_BYTES, offset);
        this.#readStarted = null;
        if (this.#stopping) return;
        const done = performance.now();
        this.#latencies.push(done - t);
        const second = Math.floor((done - this.#t0) / 1000);
        this.#perSecond[second] = (this.#perSecond[second] ?? 0) + 1;
        this.#longestGap = Math.max(this.#longestGap, done - this.#lastDone);
        this.#lastDone = done;
        if (!data.equals(baseBytes(baseFd, offset, READ_BYTES))) this.#mismatches++;
      } catch (err) {
        this.#readStarted = null;
        if (this.#stopping) return;
        this.#errors++;
        this.#lastError = errorText(err);
        this.#session?.destroy();
        this.#session = null;
        await sleep(100);
      }
    }
  }

  async #open(address: ListenAddress, exportName: string, timeoutMs: number): Promise<NbdSession> {
    const session = await NbdSession.open(address, exportName, { timeoutMs });
    this.#sessions++;
    if (this.#stopping) session.destroy();
    return session;
  }
}
