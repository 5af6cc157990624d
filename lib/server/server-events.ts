// What a running server reports as connections come and go and requests finish, for the logs
// and the metrics: the listener and each connection call a ServerEvents, and whoever listens
// (log-events.ts, metrics.ts) decides what to do with it. Each connection keeps one
// SessionRecord current, which is also what the live session list shows.

import type { OverlayEvents } from '../block/overlay-events.js';

/** One connection, as observers and the session list see it; connection.ts keeps it current. */
export interface SessionRecord {
  readonly id: number;
  /** `10.1.2.3:5000`, `[::1]:5000`, or `unix`. */
  readonly peer: string;
  /** Date.now() at accept. */
  readonly openedAt: number;
  /** The export chosen at GO / EXPORT_NAME (`golden`, `golden@alice`); null while negotiating. */
  exportName: string | null;
  /** The export as configured, which metrics count by: `golden` for `golden@alice` too; null while negotiating. */
  configuredExport: string | null;
  /** Which overlay the export gives this connection; null while negotiating. */
  overlay: OverlayKind | null;
  /** Negotiated: structured replies, and the meta contexts chosen. */
  structuredReplies: boolean;
  metaContexts: readonly string[];
  /** The TLS session, once the STARTTLS handshake succeeded. */
  tls: TlsSessionInfo | null;
  /** Requests answered, READ payload bytes sent, WRITE payload bytes received. */
  requests: number;
  bytesRead: number;
  bytesWritten: number;
  /** Bytes of data in the connection's overlay now (0 without one). */
  overlayBytes(): number;
}

export type OverlayKind = 'throwaway' | 'named' | 'read-only';

export interface TlsSessionInfo {
  readonly protocol: string;
  readonly cipher: string;
  readonly identity: string | undefined;
}

/** Why a connection was closed before its greeting. */
export type ConnectionRefusal = 'allow-list' | 'max-connections';

/** Connections and requests, and (OverlayEvents) what the overlays under them decide. */
export interface ServerEvents extends OverlayEvents {
  /** Accepted, greeting sent. */
  connectionOpened(session: SessionRecord): void;
  /** Closed before the greeting: `peer` as in SessionRecord. */
  connectionRefused(peer: string, reason: ConnectionRefusal): void;
  /** An option was answered with an NBD_REP_ERR_* (`replyType`), for the reason in `message`. */
  optionRefused(session: SessionRecord, option: number, replyType: number, message: string): void;
  /** The STARTTLS handshake succeeded (session.tls is set). */
  tlsEstablished(session: SessionRecord): void;
  /** Transmission started on session.exportName. */
  exportChosen(session: SessionRecord): void;
  /** A request was answered: its command, 0 or the NBD errno sent, its payload bytes, its time. */
  requestDone(session: SessionRecord, command: number, errno: number, bytes: number, seconds: number): void;
  /** The connection is gone and its device closed (`reason` in words). */
  connectionClosed(session: SessionRecord, reason: string): void;
}

function ignore(): void {
  /* nobody listens */
}

/** A server nobody observes. */
export const NO_EVENTS: ServerEvents = {
  copiedUp: ignore,
  zeroed: ignore,
  elided: ignore,
  connectionOpened: ignore,
  connectionRefused: ignore,
  optionRefused: ignore,
  tlsEstablished: ignore,
  exportChosen: ignore,
  requestDone: ignore,
  connectionClosed: ignore,
};

/** Report every event to each of `observers`, in order. */
export function combineEvents(observers: readonly ServerEvents[]): ServerEvents {
  if (observers.length === 0) return NO_EVENTS;
  if (observers.length === 1) return observers[0] as ServerEvents; // length checked
  return {
    connectionOpened: (s) => {
      for (const o of observers) o.connectionOpened(s);
    },
    connectionRefused: (peer, reason) => {
      for (const o of observers) o.connectionRefused(peer, reason);
    },
    optionRefused: (s, option, replyType, message) => {
      for (const o of observers) o.optionRefused(s, option, replyType, message);
    },
    tlsEstablished: (s) => {
      for (const o of observers) o.tlsEstablished(s);
    },
    exportChosen: (s) => {
      for (const o of observers) o.exportChosen(s);
    },
    requestDone: (s, command, errno, bytes, seconds) => {
      for (const o of observers) o.requestDone(s, command, errno, bytes, seconds);
    },
    connectionClosed: (s, reason) => {
      for (const o of observers) o.connectionClosed(s, reason);
    },
    copiedUp: (path, block, from) => {
      for (const o of observers) o.copiedUp(path, block, from);
    },
    zeroed: (path, first, count) => {
      for (const o of observers) o.zeroed(path, first, count);
    },
    elided: (path, first, count, to) => {
      for (const o of observers) o.elided(path, first, count, to);
    },
  };
}
