// Which accepted sockets get a Connection: a TCP peer outside the allow list, or any socket past
// the connection cap, is closed before the greeting (nothing is sent to it) and the refusal is
// logged with the peer's address, at most one line per second per reason (refusal-log.ts).

import type { Socket } from 'node:net';
import type { Logger } from '../log.js';
import type { AccessList } from './access-list.js';
import { RefusalLog } from './refusal-log.js';
import { NO_EVENTS, type ServerEvents } from './server-events.js';

export interface AdmissionPolicy {
  /** TCP peers that may connect; absent: every peer. Unix-socket clients are not checked. */
  readonly allow?: AccessList | undefined;
  /** Connections served at once, on TCP and unix sockets alike; absent: no cap. */
  readonly maxConnections?: number | undefined;
}

/** Throw unless `max` is a usable connection limit (a positive integer). */
export function validateConnectionLimit(max: number): void {
  if (!Number.isSafeInteger(max) || max < 1) throw new Error(`the connection limit must be a positive integer, not ${max}`);
}

export class Admission {
  readonly #allow: AccessList | undefined;
  readonly #maxConnections: number;
  readonly #outsideAllowList: RefusalLog;
  readonly #overCap: RefusalLog;

  readonly #events: ServerEvents;

  constructor(policy: AdmissionPolicy, log: Logger, events: ServerEvents = NO_EVENTS) {
    this.#events = events;
    const max = policy.maxConnections ?? Number.POSITIVE_INFINITY;
    if (max !== Number.POSITIVE_INFINITY) validateConnectionLimit(max);
    this.#allow = policy.allow;
    this.#maxConnections = max;
    const write = (line: string): void => log.warn(line);
    this.#outsideAllowList = new RefusalLog({ write, reason: 'address not in the allow list' });
    this.#overCap = new RefusalLog({ write, reason: `too many connections (limit ${max})` });
  }

  /**
   * Whether `socket` may be served while `open` connections are; a refused socket is destroyed
   * here. `tcp`: the socket came from a TCP listener (the allow list applies).
   */
  admit(socket: Socket, open: number, tcp: boolean): boolean {
    const address = socket.remoteAddress;
    // A TCP socket reset before we saw it has no address: nothing to check it against, refuse it.
    if (tcp && this.#allow !== undefined && (address === undefined || !this.#allow.allows(address))) {
      // The peer's address first: a destroyed socket no longer knows it.
      const peer = describePeer(socket, tcp);
      this.#outsideAllowList.refused(peer);
      this.#events.connectionRefused(peer, 'allow-list');
      socket.destroy();
      return false;
    }
    if (open >= this.#maxConnections) {
      const peer = describePeer(socket, tcp);
      this.#overCap.refused(peer);
      this.#events.connectionRefused(peer, 'max-connections');
      socket.destroy();
      return false;
    }
    return true;
  }

  /** Log the refusals still counted (at shutdown). */
  flush(): void {
    this.#outsideAllowList.flush();
    this.#overCap.flush();
  }
}

/** `10.1.2.3:5000`, `[::1]:5000` or `unix`, for log lines and the session list. */
export function describePeer(socket: Socket, tcp: boolean): string {
  if (!tcp) return 'unix';
  const address = socket.remoteAddress ?? '(address gone)';
  return `${address.includes(':') ? `[${address}]` : address}:${socket.remotePort ?? ''}`;
}
