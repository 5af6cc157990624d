// The bytes of one stream of each class: a recording cut, mutated byte by byte, message by
// message or field by field, given hostile names, or the TLS cases (STARTTLS then garbage, a
// damaged ClientHello, a real PSK session carrying a mutated stream, a stalled handshake).

import { applyByteEdit, randomByteEdits } from './byte-edits.js';
import { joined, type Recording } from './corpus.js';
import { applyFieldEdit } from './field-edits.js';
import { hostileName, hostileQuery } from './hostile-names.js';
import { randomMessageEdits } from './message-edits.js';
import {
  infoData,
  kindOf,
  metaData,
  NAMED_OPTIONS,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  option,
  optionOf,
  withName,
} from './nbd-messages.js';
import type { Rng } from './prng.js';

export type Transport = 'plain' | 'starttls' | 'tls';

/** What a stream class builds: bytes to send after `transport`'s set-up, and what was done to them. */
export interface Built {
  readonly transport: Transport;
  readonly bytes: Buffer;
  readonly ops: readonly string[];
  readonly recording: string;
  /** The server must drop this stream on its own (a stalled handshake): wait for that. */
  readonly awaitDrop?: boolean;
}

export interface PlanContext {
  readonly recordings: readonly Recording[];
  /** Real ClientHellos (client-hello.ts). */
  readonly hellos: readonly Buffer[];
  readonly exportName: string;
  readonly exportSize: number;
}

const CLIENT_FLAGS = Buffer.from('00000003', 'hex');

function messagesOf(recording: Recording): Buffer[] {
  return recording.messages.map((m) => m.bytes);
}

/** Cut `n` of all recordings' cut points (every byte position of each, in order): a sweep over `n`. */
export function truncated(context: PlanContext, n: number): Built {
  const total = context.recordings.reduce((sum, r) => sum + joined(r.messages).length, 0);
  let cut = n % total;
  for (const recording of context.recordings) {
    const bytes = joined(recording.messages);
    if (cut < bytes.length)
      return { transport: 'plain', bytes: bytes.subarray(0, cut), ops: ['cut-sweep'], recording: recording.name };
    cut -= bytes.length;
  }
  throw new Error('unreachable: cut point past every recording');
}

/** Mutated messages of `recording` (without its client flags when `tail`), by one of the plain mutators. */
function mutated(
  rng: Rng,
  context: PlanContext,
  recording: Recording,
  mutator: string,
  tail: boolean,
): { bytes: Buffer; ops: string[] } {
  const messages = messagesOf(recording).slice(tail ? 1 : 0);
  switch (mutator) {
    case 'bytes': {
      const { bytes, ops } = randomByteEdits(rng, Buffer.concat(messages));
      return { bytes, ops };
    }
    case 'messages': {
      const { messages: edited, ops } = randomMessageEdits(rng, messages, context.recordings);
      return { bytes: Buffer.concat(edited), ops };
    }
    case 'fields':
      return fieldEdited(rng, context, messages);
    case 'names':
      return renamed(rng, context, messages);
    default:
      return { bytes: Buffer.concat(messages), ops: ['as-recorded'] };
  }
}

function fieldEdited(rng: Rng, context: PlanContext, messages: Buffer[]): { bytes: Buffer; ops: string[] } {
  const ops: string[] = [];
  const out = [...messages];
  const edits = rng.between(1, 3);
  for (let k = 0; k < edits && out.length > 0; k++) {
    const i = rng.int(out.length);
    const edited = applyFieldEdit(rng, out[i] as Buffer, context.exportSize); // i < out.length
    if (edited === null) continue;
    out[i] = edited.bytes;
    ops.push(edited.op);
  }
  return { bytes: Buffer.concat(out), ops: ops.length > 0 ? ops : ['as-recorded'] };
}

/** Hostile names in the named options; sometimes GO replaced by EXPORT_NAME, or a hostile meta-context query added. */
function renamed(rng: Rng, context: PlanContext, messages: Buffer[]): { bytes: Buffer; ops: string[] } {
  const { name, kind } = hostileName(rng, context.exportName);
  const ops = [`name:${kind}`];
  let out = messages.map((m) => (kindOf(m) === 'option' && NAMED_OPTIONS.includes(optionOf(m)) ? (withName(m, name) ?? m) : m));
  const go = out.findIndex((m) => kindOf(m) === 'option' && optionOf(m) === NBD_OPT_GO);
  if (rng.chance(0.3)) {
    const exportName = option(NBD_OPT_EXPORT_NAME, name);
    out = go >= 0 ? [...out.slice(0, go), exportName, ...out.slice(go + 1)] : [...out, exportName];
    ops.push('export-name');
  } else if (go < 0) {
    out.push(option(NBD_OPT_GO, infoData(name, rng.chance(0.5) ? [0, 1, 2, 3] : [])));
    ops.push('go-added');
  }
  if (rng.chance(0.3)) {
    const queries = Array.from({ length: rng.between(0, 4) }, () => hostileQuery(rng));
    const at = Math.max(1, go);
    out = [...out.slice(0, at), option(NBD_OPT_SET_META_CONTEXT, metaData(name, queries)), ...out.slice(at)];
    ops.push('meta-queries');
  }
  return { bytes: Buffer.concat(out), ops };
}

export function plainMutated(rng: Rng, context: PlanContext, mutator: string): Built {
  const recording = rng.pick(context.recordings);
  const { bytes, ops } = mutated(rng, context, recording, mutator, false);
  return { transport: 'plain', bytes, ops, recording: recording.name };
}

/** A real PSK handshake, then a recording (client flags already sent) through one of the mutators. */
export function tlsSession(rng: Rng, context: PlanContext): Built {
  const recording = rng.pick(context.recordings);
  const mutator = rng.pick(['bytes', 'messages', 'fields', 'names', 'none']);
  const { bytes, ops } = mutated(rng, context, recording, mutator, true);
  return { transport: 'tls', bytes, ops: [`tls+${mutator}`, ...ops], recording: recording.name };
}

function garbage(rng: Rng): { bytes: Buffer; kind: string } {
  switch (rng.int(4)) {
    case 0:
      return { bytes: rng.bytes(rng.between(1, 2048)), kind: 'random' };
    case 1:
      return { bytes: Buffer.from('GET / HTTP/1.1\r\nHost: x\r\n\r\n'), kind: 'http' };
    case 2:
      return { bytes: option(NBD_OPT_GO, infoData(Buffer.from('pattern'), [])), kind: 'nbd-option' };
    default:
      // A TLS record header announcing far more than follows.
      return { bytes: Buffer.concat([Buffer.from('16030100ff', 'hex'), rng.bytes(rng.between(0, 64))]), kind: 'record-head' };
  }
}

/** STARTTLS then garbage: pipelined behind it (plain), or after its ACK (starttls); sometimes STARTTLS with data. */
export function starttlsGarbage(rng: Rng): Built {
  const { bytes: junk, kind } = garbage(rng);
  if (rng.chance(0.5)) {
    const starttls = rng.chance(0.2) ? option(NBD_OPT_STARTTLS, rng.bytes(rng.between(1, 8))) : option(NBD_OPT_STARTTLS);
    const bytes = Buffer.concat([CLIENT_FLAGS, starttls, junk]);
    return { transport: 'plain', bytes, ops: [`pipelined:${kind}`], recording: '-' };
  }
  return { transport: 'starttls', bytes: junk, ops: [`after-ack:${kind}`], recording: '-' };
}

/** A real ClientHello after STARTTLS's ACK: cut short, damaged, its record length changed, or sent twice. */
export function damagedHello(rng: Rng, context: PlanContext): Built {
  const hello = rng.pick(context.hellos);
  const edit = rng.pick(['cut', 'cut', 'bytes', 'record-length', 'twice']);
  let bytes: Buffer;
  switch (edit) {
    case 'cut':
      bytes = hello.subarray(0, rng.int(hello.length));
      break;
    case 'bytes':
      bytes = randomByteEdits(rng, hello).bytes;
      break;
    case 'record-length':
      bytes = Buffer.from(hello);
      bytes.writeUInt16BE(rng.pick([0, 1, 0x4000, 0x4001, 0xffff, rng.int(0x10000)]), 3);
      break;
    default:
      bytes = Buffer.concat([hello, hello]);
  }
  // A cut hello with nothing after it stalls the handshake: the server must drop it in time.
  const awaitDrop = edit === 'cut' && rng.chance(0.1);
  return { transport: 'starttls', bytes, ops: [`hello-${edit}`], recording: 'client-hello', awaitDrop };
}

/** A handshake that never chooses an export (a recording cut before its GO ends), plain or over TLS. */
export function stalled(rng: Rng, context: PlanContext): Built {
  const recording = rng.pick(context.recordings);
  const overTls = rng.chance(0.3);
  const messages = messagesOf(recording).slice(overTls ? 1 : 0);
  const go = messages.findIndex((m) => kindOf(m) === 'option' && optionOf(m) === NBD_OPT_GO);
  const end = go >= 0 ? Buffer.concat(messages.slice(0, go + 1)).length - 1 : Buffer.concat(messages).length;
  const bytes = Buffer.concat(messages).subarray(0, rng.int(end + 1));
  const edited = rng.chance(0.2) && bytes.length > 0 ? applyByteEdit(rng, bytes, 'bit-flip') : bytes;
  return {
    transport: overTls ? 'tls' : 'plain',
    bytes: edited,
    ops: [overTls ? 'stall-tls' : 'stall'],
    recording: recording.name,
    awaitDrop: true,
  };
}
