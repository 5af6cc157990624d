// Answered requests as plain numbers, per export and command: results by errno, payload bytes,
// and durations in histogram buckets. The request path only adds (a Map lookup by export, an
// array slot by command); label values are made once per (export, command) and read at scrape.

import { COMMAND_NAMES, ERRNO_NAMES, NBD_CMD_READ } from '../protocol/constants.js';

/** Request duration buckets (seconds): a page-cache 4 KiB request takes tens of µs, an fsync ms, a stall up to 1 s. */
export const DURATION_BUCKETS: readonly number[] = [
  0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1,
];
const LE_LABELS = [...DURATION_BUCKETS.map(String), '+Inf'];

/**
 * Export label values kept at most. Labels are configured exports (a named overlay counts under
 * its export), but reloads can add exports over a process's life, and a
 * counter's series live as long as the process: past this many, new exports count as `(other)`
 * (no export name has parentheses), so no client can grow the scrape without bound.
 */
export const MAX_EXPORT_LABELS = 1000;
export const OTHER_EXPORTS = '(other)';

/** `EPERM` for NBD_EPERM: the spec's name without its NBD_ prefix; `other` for a number it does not name. */
function errnoLabel(errno: number): string {
  return ERRNO_NAMES[errno]?.slice('NBD_'.length) ?? 'other';
}

/** Where an unknown command type (the client's number) is counted: one slot past the known ones. */
const UNKNOWN_COMMAND_SLOT = Math.max(...Object.keys(COMMAND_NAMES).map(Number)) + 1;

/** One value of a metric as prom-client's Registry prints it. */
export interface SampleValue {
  readonly labels: Readonly<Record<string, string>>;
  readonly value: number;
  readonly metricName?: string;
}

/** One (export, command): answers by errno and their durations. */
class CommandCounts {
  /** `read`, `write_zeroes`: the spec's name without NBD_CMD_, lower case; `unknown`. */
  readonly command: string;
  ok = 0;
  readonly errors = new Map<number, number>();
  /** Per bucket, not cumulative; the last one is +Inf. */
  readonly buckets = new Float64Array(LE_LABELS.length);
  seconds = 0;

  constructor(command: string) {
    this.command = command;
  }

  record(errno: number, seconds: number): void {
    if (errno === 0) this.ok++;
    else this.errors.set(errno, (this.errors.get(errno) ?? 0) + 1);
    let slot = 0;
    for (const bound of DURATION_BUCKETS) {
      if (seconds <= bound) break;
      slot++;
    }
    this.buckets[slot] = (this.buckets[slot] ?? 0) + 1;
    this.seconds += seconds;
  }
}

/** One export's requests by command, and its payload bytes. */
class ExportCounts {
  readonly name: string;
  readBytes = 0;
  writtenBytes = 0;
  readonly commands: (CommandCounts | undefined)[] = [];

  constructor(name: string) {
    this.name = name;
  }

  command(type: number): CommandCounts {
    const name = COMMAND_NAMES[type];
    const slot = name === undefined ? UNKNOWN_COMMAND_SLOT : type;
    const existing = this.commands[slot];
    if (existing !== undefined) return existing;
    const created = new CommandCounts(name === undefined ? 'unknown' : name.slice('NBD_CMD_'.length).toLowerCase());
    this.commands[slot] = created;
    return created;
  }
}

export class RequestCounts {
  readonly #exports = new Map<string, ExportCounts>();
  /** Every export past MAX_EXPORT_LABELS, together. */
  #other: ExportCounts | null = null;

  /** One answered request: its export, command type, NBD errno (0: ok), payload bytes and time. */
  record(exportName: string, command: number, errno: number, bytes: number, seconds: number): void {
    const counts = this.#exports.get(exportName) ?? this.#add(exportName);
    counts.command(command).record(errno, seconds);
    if (command === NBD_CMD_READ) counts.readBytes += bytes;
    else counts.writtenBytes += bytes;
  }

  /** nbd_cow_requests_total: by export, command and result (`ok`, the errno's name, or `other`). */
  requests(): SampleValue[] {
    const values: SampleValue[] = [];
    for (const [e, c] of this.#commands()) {
      if (c.ok > 0) values.push({ labels: { export: e.name, command: c.command, result: 'ok' }, value: c.ok });
      for (const [errno, n] of c.errors) {
        values.push({ labels: { export: e.name, command: c.command, result: errnoLabel(errno) }, value: n });
      }
    }
    return values;
  }

  /** READ payload bytes (`read`) or WRITE payload bytes (`written`) by export. */
  bytes(which: 'read' | 'written'): SampleValue[] {
    return this.#all().map((e) => ({ labels: { export: e.name }, value: which === 'read' ? e.readBytes : e.writtenBytes }));
  }

  /** The duration histogram's values, `${name}_bucket` (cumulative), `_sum` and `_count`, by export and command. */
  durations(name: string): SampleValue[] {
    const values: SampleValue[] = [];
    for (const [e, c] of this.#commands()) {
      const labels = { export: e.name, command: c.command };
      let cumulative = 0;
      c.buckets.forEach((n, i) => {
        cumulative += n;
        values.push({ labels: { ...labels, le: LE_LABELS[i] ?? '+Inf' }, value: cumulative, metricName: `${name}_bucket` });
      });
      values.push({ labels, value: c.seconds, metricName: `${name}_sum` });
      values.push({ labels, value: cumulative, metricName: `${name}_count` });
    }
    return values;
  }

  #add(name: string): ExportCounts {
    if (this.#exports.size >= MAX_EXPORT_LABELS) {
      this.#other ??= new ExportCounts(OTHER_EXPORTS);
      return this.#other;
    }
    const counts = new ExportCounts(name);
    this.#exports.set(name, counts);
    return counts;
  }

  #all(): ExportCounts[] {
    const all = [...this.#exports.values()];
    if (this.#other !== null) all.push(this.#other);
    return all;
  }

  *#commands(): Iterable<[ExportCounts, CommandCounts]> {
    for (const e of this.#all()) {
      for (const c of e.commands) if (c !== undefined) yield [e, c];
    }
  }
}
