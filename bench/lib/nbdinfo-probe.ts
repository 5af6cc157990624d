// A real client's view during bench/hostile.ts: `nbdinfo --size URI` started once a second
// (libnbd's handshake, no reads), each bounded by a timeout; ok = it printed the base's size.

import { spawn } from 'node:child_process';
import { round } from './workloads.js';

export interface ProbeResult {
  readonly ok: number;
  readonly total: number;
  /** Wall time of the slowest run, ms (a killed run counts with its timeout). */
  readonly slowest_ms: number | null;
  readonly last_error: string | null;
}

export class NbdinfoProbe {
  readonly #uri: string;
  readonly #expectSize: number;
  readonly #timeoutMs: number;
  readonly #running = new Set<Promise<void>>();
  #timer: NodeJS.Timeout | null = null;
  #ok = 0;
  #total = 0;
  #slowest: number | null = null;
  #lastError: string | null = null;

  constructor(uri: string, expectSize: number, timeoutMs = 10_000) {
    this.#uri = uri;
    this.#expectSize = expectSize;
    this.#timeoutMs = timeoutMs;
  }

  /** One run now, then one a second. */
  start(): void {
    this.#launch();
    this.#timer = setInterval(() => this.#launch(), 1000);
  }

  /** No more runs; wait for those still going (each ends by its timeout) and return the counts. */
  async stop(): Promise<ProbeResult> {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
    await Promise.all([...this.#running]);
    return { ok: this.#ok, total: this.#total, slowest_ms: round(this.#slowest, 1), last_error: this.#lastError };
  }

  #launch(): void {
    this.#total++;
    const run = this.#runOnce().finally(() => this.#running.delete(run));
    this.#running.add(run);
  }

  #runOnce(): Promise<void> {
    const t = performance.now();
    return new Promise((resolve) => {
      const child = spawn('nbdinfo', ['--size', this.#uri], { stdio: ['ignore', 'pipe', 'pipe'], timeout: this.#timeoutMs });
      let out = '';
      let err = '';
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
      });
      child.stderr.on('data', (d: Buffer) => {
        err += d.toString();
      });
      let settled = false;
      // A spawn error may be followed by 'close': count the run once.
      const done = (failure: string | null): void => {
        if (settled) return;
        settled = true;
        const ms = performance.now() - t;
        if (this.#slowest === null || ms > this.#slowest) this.#slowest = ms;
        if (failure === null) this.#ok++;
        else this.#lastError = failure;
        resolve();
      };
      child.once('error', (e) => done(`nbdinfo: ${e.message}`));
      child.once('close', (code, signal) => {
        if (code === 0 && out.trim() === String(this.#expectSize)) done(null);
        else if (signal !== null) done(`nbdinfo killed by ${signal} after ${Math.round(performance.now() - t)} ms`);
        else done(`nbdinfo exited ${code}: ${(err || out).trim().slice(0, 200)}`);
      });
    });
  }
}
