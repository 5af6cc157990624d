// An in-memory BlockDevice for the server tests, whose calls can be held at a gate to keep
// requests in flight and made to fail one at a time.

import type { BlockDevice, Extent, ExtentState, WriteOptions, ZeroOptions } from '../../lib/block/device.js';

export interface FakeCall {
  readonly op: 'read' | 'write' | 'zero' | 'trim' | 'flush' | 'cache' | 'extents' | 'close';
  readonly offset?: number;
  readonly length?: number;
  readonly options?: WriteOptions | ZeroOptions;
}

const STATE_CODES: readonly ExtentState[] = ['base', 'data', 'zero'];

/**
 * A BlockDevice over a Buffer. `hold()` makes every later call wait until `release()`;
 * `failNext(op, code)` makes the next call of that kind throw an Error with that `code`.
 */
export class FakeDevice implements BlockDevice {
  readonly size: number;
  readonly writable: boolean;
  readonly data: Buffer;
  readonly calls: FakeCall[] = [];
  /** Per-byte extent states for extents(): 0 base, 1 data, 2 zero (see setState). */
  readonly states: Uint8Array;
  closed = false;
  #gate: Promise<void> | null = null;
  #open: () => void = () => undefined;
  #pending = 0;
  #failures = new Map<FakeCall['op'], unknown>();

  constructor(size: number, options: { writable?: boolean; data?: Buffer } = {}) {
    this.size = size;
    this.writable = options.writable ?? true;
    this.data = options.data ?? Buffer.alloc(size);
    this.states = new Uint8Array(size);
  }

  /** Mark [start, end) as base, data or zero for extents(). */
  setState(state: ExtentState, start: number, end: number): void {
    this.states.fill(STATE_CODES.indexOf(state), start, end);
  }

  /** Calls waiting at the gate. */
  get pending(): number {
    return this.#pending;
  }

  hold(): void {
    this.#gate ??= new Promise((resolve) => {
      this.#open = resolve;
    });
  }

  release(): void {
    this.#gate = null;
    this.#open();
  }

  failNext(op: FakeCall['op'], error: unknown): void {
    this.#failures.set(op, error);
  }

  async #enter(call: FakeCall): Promise<void> {
    this.calls.push(call);
    const gate = this.#gate;
    if (gate !== null) {
      this.#pending++;
      await gate;
      this.#pending--;
    }
    if (this.#failures.has(call.op)) {
      const error = this.#failures.get(call.op);
      this.#failures.delete(call.op);
      throw error;
    }
  }

  async read(offset: number, dest: Buffer): Promise<void> {
    await this.#enter({ op: 'read', offset, length: dest.length });
    this.data.copy(dest, 0, offset, offset + dest.length);
  }

  async write(offset: number, data: Buffer, options: WriteOptions): Promise<void> {
    await this.#enter({ op: 'write', offset, length: data.length, options });
    data.copy(this.data, offset);
    this.setState('data', offset, offset + data.length);
  }

  async zero(offset: number, length: number, options: ZeroOptions): Promise<void> {
    await this.#enter({ op: 'zero', offset, length, options });
    this.data.fill(0, offset, offset + length);
    this.setState(options.noHole ? 'data' : 'zero', offset, offset + length);
  }

  async trim(offset: number, length: number, options: WriteOptions): Promise<void> {
    await this.#enter({ op: 'trim', offset, length, options });
    this.data.fill(0, offset, offset + length);
    this.setState('zero', offset, offset + length);
  }

  async flush(): Promise<void> {
    await this.#enter({ op: 'flush' });
  }

  async cache(offset: number, length: number): Promise<void> {
    await this.#enter({ op: 'cache', offset, length });
  }

  async extents(offset: number, length: number, maxExtents: number): Promise<Extent[]> {
    await this.#enter({ op: 'extents', offset, length });
    const out: Extent[] = [];
    const end = Math.min(this.size, offset + length);
    let at = offset;
    while (at < end && out.length < maxExtents) {
      const code = this.states[at];
      let stop = at + 1;
      while (stop < end && this.states[stop] === code) stop++;
      out.push({ length: stop - at, state: STATE_CODES[code ?? 0] ?? 'base' });
      at = stop;
    }
    return out;
  }

  async close(): Promise<void> {
    this.calls.push({ op: 'close' });
    this.closed = true;
  }
}
