// Moving a connection to the worker process that has its named overlay open (--workers N,
// doc/workers.md). A named overlay is one device in one process: its lock file names the holder.
// When a worker's GO for EXPORT@NAME finds the lock held by a sibling worker, the connection is
// handed over before the GO is answered: the socket (unread past what the connection parsed), the
// handshake bytes the client sent before that GO, and the GO itself with whatever followed it.
// The owner replays the earlier options with their replies muted (the client has them already),
// so structured replies, meta contexts and the client flags are set as they were, then answers
// the GO itself: the client sees one ordinary handshake, and every request runs in the owner.
//
// A TLS session cannot leave the process that made it. A TLS connection stays in its worker, which
// relays its plain bytes over a unix socket of the owner's own (worker-process.ts): the owner
// gets the options sent after STARTTLS, with the TLS identity and the client flags, and serves the
// relayed stream as the connection. That costs a process hop per request, for those connections
// only.

import type { Socket } from 'node:net';

/** What the owner needs to go on with a handed-over connection. */
export interface Replay {
  /** Client flags and every option before the GO, replayed with replies muted. */
  readonly handshake: Buffer;
  /** The GO (or EXPORT_NAME) option, header and data, and every byte the client sent after it. */
  readonly pending: Buffer;
  /** How many times this connection has moved (a lock that changed hands meanwhile moves it again). */
  readonly hops: number;
  /**
   * A TLS connection, relayed: `handshake` holds only the options after STARTTLS, and the owner
   * takes these from the worker that holds the TLS session.
   */
  readonly tls?: RelayedTls;
}

/** The TLS session of a relayed connection, as its owner needs it (the session stays with the relaying worker). */
export interface RelayedTls {
  /** The client as the relaying worker sees it: for the log, and its IP address for per-export allow lists. */
  readonly peer: string;
  readonly peerAddress: string | undefined;
  readonly identity: string | undefined;
  readonly noZeroes: boolean;
  readonly protocol: string;
  readonly cipher: string;
}

/** The reason a connection's part in this worker ends with (the observers' disconnect line). */
export function handedOverReason(owner: number, relayed = false, holds = HOLDS_NAMED_OVERLAY): string {
  return relayed
    ? `relayed to worker ${owner}, which ${holds} (the TLS session stays here)`
    : `handed over to worker ${owner}, which ${holds}`;
}

/** Whether a close reason is a hand-over or a relay: the connection lives on in another worker. */
export function isHandedOver(reason: string): boolean {
  return reason.startsWith('handed over to worker ') || reason.startsWith('relayed to worker ');
}

/** The most handshake bytes a worker keeps for a move (a hostile client's options are not kept past it). */
export const MAX_REPLAY_BYTES = 64 * 1024;

/** A connection moves at most this many times; then its GO is refused as "in use". */
export const MAX_HOPS = 3;

/** What the owner of a handed-over connection holds, by default (handedOverReason). */
const HOLDS_NAMED_OVERLAY = 'has the named overlay open';

/**
 * Thrown by an export's openDevice when another worker of this server holds what the connection
 * needs (its named overlay, or its remote base's block cache): the connection should move to
 * `owner` (a pid). `holds` says what, for the log ("has the named overlay open").
 */
export class HandOver extends Error {
  readonly owner: number;
  readonly holds: string;

  constructor(owner: number, message: string, holds = HOLDS_NAMED_OVERLAY) {
    super(message);
    this.name = 'HandOver';
    this.owner = owner;
    this.holds = holds;
  }
}

/** A Replay as the IPC channel carries it (JSON: buffers as base64). */
export interface ReplayMessage {
  readonly handshake: string;
  readonly pending: string;
  readonly hops: number;
  readonly tls?: {
    readonly peer: string;
    readonly peerAddress?: string;
    readonly identity?: string;
    readonly noZeroes: boolean;
    readonly protocol: string;
    readonly cipher: string;
  };
}

export function encodeReplay(replay: Replay): ReplayMessage {
  const message = {
    handshake: replay.handshake.toString('base64'),
    pending: replay.pending.toString('base64'),
    hops: replay.hops,
  };
  if (replay.tls === undefined) return message;
  const { identity, peerAddress, ...rest } = replay.tls;
  return {
    ...message,
    tls: { ...rest, ...(identity === undefined ? {} : { identity }), ...(peerAddress === undefined ? {} : { peerAddress }) },
  };
}

/** The Replay in an IPC message, or a clear error for anything malformed. */
export function decodeReplay(message: unknown): Replay {
  const m = message as Partial<ReplayMessage> | null;
  if (
    typeof m !== 'object' ||
    m === null ||
    typeof m.handshake !== 'string' ||
    typeof m.pending !== 'string' ||
    typeof m.hops !== 'number' ||
    !Number.isInteger(m.hops) ||
    m.hops < 1
  ) {
    throw new Error('a handed-over connection came without its handshake');
  }
  const replay = { handshake: Buffer.from(m.handshake, 'base64'), pending: Buffer.from(m.pending, 'base64'), hops: m.hops };
  if (m.tls === undefined) return replay;
  const tls = m.tls as Partial<Record<keyof RelayedTls, unknown>> | null;
  const optionalString = (value: unknown): boolean => value === undefined || typeof value === 'string';
  if (
    typeof tls !== 'object' ||
    tls === null ||
    typeof tls.peer !== 'string' ||
    typeof tls.noZeroes !== 'boolean' ||
    typeof tls.protocol !== 'string' ||
    typeof tls.cipher !== 'string' ||
    !optionalString(tls.identity) ||
    !optionalString(tls.peerAddress)
  ) {
    throw new Error('a relayed TLS connection came without its TLS state');
  }
  return {
    ...replay,
    tls: {
      peer: tls.peer,
      peerAddress: tls.peerAddress as string | undefined,
      identity: tls.identity as string | undefined,
      noZeroes: tls.noZeroes,
      protocol: tls.protocol,
      cipher: tls.cipher,
    },
  };
}

/** The most a relay header may hold: a replay of MAX_REPLAY_BYTES, as base64 and JSON. */
export const MAX_RELAY_HEADER_BYTES = 4 * MAX_REPLAY_BYTES;

/** What a relayed connection begins with on the owner's unix socket: a 4-byte length, then the replay as JSON. */
export function encodeRelayHeader(replay: Replay): Buffer {
  const json = Buffer.from(JSON.stringify(encodeReplay(replay)), 'utf8');
  const length = Buffer.alloc(4);
  length.writeUInt32BE(json.length, 0);
  return Buffer.concat([length, json]);
}

/**
 * The replay at the start of `bytes` (relay header), and how many bytes it took; null while more
 * bytes are needed. Throws on a header that is too long or malformed.
 */
export function decodeRelayHeader(bytes: Buffer): { replay: Replay; used: number } | null {
  if (bytes.length < 4) return null;
  const length = bytes.readUInt32BE(0);
  if (length > MAX_RELAY_HEADER_BYTES) throw new Error(`a relay header of ${length} bytes`);
  if (bytes.length < 4 + length) return null;
  const message = JSON.parse(bytes.subarray(4, 4 + length).toString('utf8')) as unknown;
  return { replay: decodeReplay(message), used: 4 + length };
}

/**
 * Stop `socket`'s handle reading before the socket is sent to another process: Node drops what a
 * sent handle reads until the other side has it, and a process that receives a socket starts
 * reading it at once. (A client waits for a reply before it sends more: a GO's, or the greeting
 * the receiving worker sends; this is for the bytes that come meanwhile.) Node's own fields, as
 * net.Socket sets them when it stops a handle itself.
 */
export function stopReading(socket: Socket): void {
  const handle = (socket as unknown as { _handle?: { reading?: boolean; readStop?: () => number } })._handle;
  if (handle?.reading === true && handle.readStop !== undefined) {
    handle.reading = false;
    handle.readStop();
  }
}
