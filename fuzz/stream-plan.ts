// One stream's plan, rebuilt from (seed, index) alone: its class and bytes (stream-classes.ts),
// the pieces they are written in, the pauses between pieces, and how the stream ends.

import { Rng } from './prng.js';
import {
  type Built,
  damagedHello,
  type PlanContext,
  plainMutated,
  stalled,
  starttlsGarbage,
  type Transport,
  tlsSession,
  truncated,
} from './stream-classes.js';

export type StreamClass =
  | 'truncate'
  | 'bytes'
  | 'messages'
  | 'fields'
  | 'names'
  | 'starttls-garbage'
  | 'tls-hello'
  | 'tls-session'
  | 'stall';

/**
 * reset: RST (TLS streams: destroy); destroy: close at once; end: FIN, then wait a moment for the
 * server's; disc: NBD_CMD_DISC and FIN, then wait; abort: RST after `abortAfter` pieces;
 * await-drop: wait for the server to drop the stream on its own (handshake timeout).
 */
export type Ending = 'reset' | 'destroy' | 'end' | 'disc' | 'abort' | 'await-drop';

/** Between pieces: nothing (one event-loop turn), a setImmediate, or a 1 ms timer. */
export type Gap = 'none' | 'immediate' | 'timer';

export interface StreamPlan {
  /** `seed:index`, what FUZZ_REPLAY takes. */
  readonly key: string;
  readonly streamClass: StreamClass;
  readonly transport: Transport;
  readonly bytes: Buffer;
  /** Piece lengths, summing to bytes.length. */
  readonly pieces: readonly number[];
  readonly gap: Gap;
  readonly ending: Ending;
  /** For `abort`: the pieces sent before the reset. */
  readonly abortAfter: number;
  readonly ops: readonly string[];
  readonly recording: string;
}

/** One stream in TRUNCATE_EVERY is the cut sweep, so every cut point of every recording is reached in order. */
const TRUNCATE_EVERY = 10;
/**
 * Most pieces one stream is written in: each is a write() system call, and with thousands the
 * fuzzer spent a third of its time writing. Every split point of every frame is already tested
 * by test/server/byte-queue.test.ts; here pieces only vary what the server's reads see.
 */
const MAX_PIECES = 128;

// Weights per thousand streams that are not the sweep.
const CLASS_WEIGHTS: readonly (readonly [StreamClass, number])[] = [
  ['bytes', 220],
  ['messages', 150],
  ['fields', 230],
  ['names', 150],
  ['starttls-garbage', 60],
  ['tls-hello', 60],
  ['tls-session', 127],
  ['stall', 3],
];

function build(rng: Rng, context: PlanContext, streamClass: StreamClass, index: number): Built {
  switch (streamClass) {
    case 'truncate':
      return truncated(context, Math.floor(index / TRUNCATE_EVERY));
    case 'bytes':
    case 'messages':
    case 'fields':
    case 'names':
      return plainMutated(rng, context, streamClass);
    case 'starttls-garbage':
      return starttlsGarbage(rng);
    case 'tls-hello':
      return damagedHello(rng, context);
    case 'tls-session':
      return tlsSession(rng, context);
    case 'stall':
      return stalled(rng, context);
  }
}

function splitPieces(rng: Rng, length: number): number[] {
  if (length === 0) return [];
  const mode = rng.weighted<'whole' | 'random' | 'bytewise' | 'halves'>([
    ['whole', 30],
    ['random', 50],
    ['bytewise', 10],
    ['halves', 10],
  ]);
  if (mode === 'whole') return [length];
  if (mode === 'halves') {
    const first = rng.between(1, length);
    return first === length ? [length] : [first, length - first];
  }
  const chosen = mode === 'bytewise' ? 1 : rng.pick([4, 16, 64, 1500, 16_384]);
  const largest = Math.max(chosen, Math.ceil(length / MAX_PIECES));
  const pieces: number[] = [];
  for (let left = length; left > 0; ) {
    const piece = Math.min(left, rng.between(1, largest));
    pieces.push(piece);
    left -= piece;
  }
  return pieces;
}

export function planStream(seed: number, index: number, context: PlanContext): StreamPlan {
  const rng = new Rng(seed, index);
  const streamClass = index % TRUNCATE_EVERY === TRUNCATE_EVERY - 1 ? 'truncate' : rng.weighted(CLASS_WEIGHTS);
  const built = build(rng, context, streamClass, index);
  const pieces = splitPieces(rng, built.bytes.length);
  const gap = pieces.length <= 30 && rng.chance(0.1) ? 'timer' : rng.chance(0.45) ? 'immediate' : 'none';
  const ending: Ending =
    built.awaitDrop === true
      ? 'await-drop'
      : rng.weighted<Ending>([
          ['reset', 20],
          ['destroy', 15],
          ['end', 20],
          ['disc', 30],
          ['abort', 15],
        ]);
  return {
    key: `${seed}:${index}`,
    streamClass,
    transport: built.transport,
    bytes: built.bytes,
    pieces,
    gap,
    ending,
    abortAfter: ending === 'abort' ? rng.int(pieces.length + 1) : pieces.length,
    ops: built.ops,
    recording: built.recording,
  };
}
