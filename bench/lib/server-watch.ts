// Watches the server during a case of bench/hostile.ts, every 100 ms: VmRSS and VmHWM, the
// sockets it holds, and which hostile connections it has dropped since it held them. Calls
// `onLimit` once if the server dies or its RSS passes the cap, so the case can stop early.

import type { HostileClient, HostileKind } from './hostile-clients.js';
import { alive, statusKiB } from './proc.js';
import { heldSockets } from './tcp-peers.js';
import { round } from './workloads.js';

/** One sample: seconds since the case started, VmRSS and VmHWM in KiB, sockets held. */
export type Sample = readonly [t_s: number, rss_kib: number, hwm_kib: number, sockets: number];

interface Tracked {
  readonly client: HostileClient;
  seen: boolean;
  droppedMs: number | null;
}

export interface DropSummary {
  readonly opened: number;
  /** Connections the server held and then closed, before the case ended. */
  readonly dropped: number;
  /** Seconds from the case start (and from the client's open) of the first and last drop. */
  readonly first_drop_s: number | null;
  readonly last_drop_s: number | null;
  readonly min_held_s: number | null;
  readonly max_held_s: number | null;
}

export type LimitReason = 'died' | 'rss-cap';

export class ServerWatch {
  readonly samples: Sample[] = [];
  rssMaxKiB = 0;
  readonly #pid: number;
  readonly #port: number;
  readonly #t0: number;
  readonly #rssCapKiB: number;
  readonly #onLimit: (reason: LimitReason) => void;
  readonly #tracked = new Map<number, Tracked>();
  #limit: LimitReason | null = null;
  #timer: NodeJS.Timeout | null = null;

  constructor(pid: number, port: number, t0: number, rssCapKiB: number, onLimit: (reason: LimitReason) => void) {
    this.#pid = pid;
    this.#port = port;
    this.#t0 = t0;
    this.#rssCapKiB = rssCapKiB;
    this.#onLimit = onLimit;
  }

  /** Why the case had to stop early, if it did. */
  get limit(): LimitReason | null {
    return this.#limit;
  }

  start(): void {
    this.sample();
    this.#timer = setInterval(() => this.sample(), 100);
  }

  stop(): void {
    if (this.#timer !== null) clearInterval(this.#timer);
    this.#timer = null;
  }

  /** Watch this hostile connection from now on. */
  track(client: HostileClient): void {
    this.#tracked.set(client.port, { client, seen: false, droppedMs: null });
  }

  sample(): void {
    if (this.#limit === 'died') return;
    const now = performance.now() - this.#t0;
    const held = alive(this.#pid) ? heldSockets(this.#pid, this.#port) : null;
    const rss = statusKiB(this.#pid, 'VmRSS');
    const hwm = statusKiB(this.#pid, 'VmHWM');
    if (held === null || rss === null || hwm === null) {
      this.#reach('died');
      return;
    }
    this.samples.push([round(now / 1000, 2) ?? 0, rss, hwm, held.sockets]);
    this.rssMaxKiB = Math.max(this.rssMaxKiB, rss);
    for (const [port, t] of this.#tracked) {
      if (held.peerPorts.has(port)) t.seen = true;
      else if (t.seen && t.droppedMs === null) t.droppedMs = now;
    }
    if (rss > this.#rssCapKiB) this.#reach('rss-cap');
  }

  /** Drops of the connections of `kind` (all kinds if omitted). */
  drops(kind?: HostileKind): DropSummary {
    const list = [...this.#tracked.values()].filter((t) => kind === undefined || t.client.kind === kind);
    const dropped = list.filter((t) => t.droppedMs !== null);
    const at = dropped.map((t) => (t.droppedMs ?? 0) / 1000);
    const held = dropped.map((t) => ((t.droppedMs ?? 0) - t.client.openedMs) / 1000);
    const s = (xs: number[], pick: (a: number, b: number) => number): number | null =>
      xs.length === 0
        ? null
        : round(
            xs.reduce((a, b) => pick(a, b)),
            1,
          );
    return {
      opened: list.length,
      dropped: dropped.length,
      first_drop_s: s(at, Math.min),
      last_drop_s: s(at, Math.max),
      min_held_s: s(held, Math.min),
      max_held_s: s(held, Math.max),
    };
  }

  #reach(reason: LimitReason): void {
    if (this.#limit !== null) return;
    this.#limit = reason;
    if (reason === 'died') this.stop();
    this.#onLimit(reason);
  }
}
