// Moving a connection to the worker process that has its named overlay open (--workers N,
// doc/workers.md). A named overlay is one device in one process: its lock file names the holder.
// When a worker's GO for EXPORT@NAME finds the lock held by a sibling worker, the connection is
// handed over before the GO is answered: the socket (unread past what the connection parsed), the
// handshake bytes the client sent before that GO, and the GO itself with whatever followed it.
// The owner replays the earlier options with their replies muted (the client has them already),
// so structured replies, meta contexts and the client flags are set as they were, then answers
// the GO itself: the client sees one ordinary handshake, and every request runs in the owner.
//
// Not for TLS: the TLS session cannot leave the process that made it (negotiation.ts refuses the
// GO instead, naming the worker that holds the overlay).

/** What the owner needs to go on with a handed-over connection. */
export interface Replay {
  /** Client flags and every option before the GO, replayed with replies muted. */
  readonly handshake: Buffer;
  /** The GO (or EXPORT_NAME) option, header and data, and every byte the client sent after it. */
  readonly pending: Buffer;
  /** How many times this connection has moved (a lock that changed hands meanwhile moves it again). */
  readonly hops: number;
}

/** The reason a connection's part in this worker ends with (the observers' disconnect line). */
export function handedOverReason(owner: number): string {
  return `handed over to worker ${owner}, which has the named overlay open`;
}

/** Whether a close reason is a hand-over: the connection lives on in another worker. */
export function isHandedOver(reason: string): boolean {
  return reason.startsWith('handed over to worker ');
}

/** The most handshake bytes a worker keeps for a move (a hostile client's options are not kept past it). */
export const MAX_REPLAY_BYTES = 64 * 1024;

/** A connection moves at most this many times; then its GO is refused as "in use". */
export const MAX_HOPS = 3;

/**
 * Thrown by a named export's openDevice when another worker of this server holds the overlay:
 * the connection should move to `owner` (a pid).
 */
export class HandOver extends Error {
  readonly owner: number;

  constructor(owner: number, message: string) {
    super(message);
    this.name = 'HandOver';
    this.owner = owner;
  }
}

/** A Replay as the IPC channel carries it (JSON: buffers as base64). */
export interface ReplayMessage {
  readonly handshake: string;
  readonly pending: string;
  readonly hops: number;
}

export function encodeReplay(replay: Replay): ReplayMessage {
  return { handshake: replay.handshake.toString('base64'), pending: replay.pending.toString('base64'), hops: replay.hops };
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
  return { handshake: Buffer.from(m.handshake, 'base64'), pending: Buffer.from(m.pending, 'base64'), hops: m.hops };
}
