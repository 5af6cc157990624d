// Mutations that know nothing of NBD: bit flips, bytes set, inserted, deleted or repeated, and a
// cut. They move and break every frame boundary the server parses.

import { IHAVEOPT, REQUEST_MAGIC, u32 } from '../test/helpers/raw-nbd/wire.js';
import type { Rng } from './prng.js';

export type ByteEdit = 'bit-flip' | 'byte-set' | 'insert' | 'delete' | 'repeat-range' | 'cut';

const BYTE_EDITS: readonly ByteEdit[] = ['bit-flip', 'byte-set', 'insert', 'delete', 'repeat-range', 'cut'];

const INTERESTING_BYTES = [0x00, 0x01, 0x7f, 0x80, 0xfe, 0xff];

function magicBytes(): Buffer {
  const ihaveopt = Buffer.alloc(8);
  ihaveopt.writeBigUInt64BE(IHAVEOPT);
  return ihaveopt;
}

/** Bytes worth inserting: magics that start a frame in the middle of another, and extreme lengths. */
function insertion(rng: Rng): Buffer {
  switch (rng.int(4)) {
    case 0:
      return magicBytes();
    case 1:
      return u32(REQUEST_MAGIC);
    case 2:
      return u32(rng.pick([0, 0xffffffff, 0x7fffffff, 0x10000, 0x10001]));
    default:
      return rng.bytes(rng.between(1, 16));
  }
}

/** A position in [0, length]: often at a 4-byte boundary, where fields start. */
function position(rng: Rng, length: number): number {
  const at = rng.int(length + 1);
  return rng.chance(0.5) ? at - (at % 4) : at;
}

/** Apply `edit` to a copy of `bytes`. */
export function applyByteEdit(rng: Rng, bytes: Buffer, edit: ByteEdit): Buffer {
  const out = Buffer.from(bytes);
  if (out.length === 0) return edit === 'insert' ? insertion(rng) : out;
  switch (edit) {
    case 'bit-flip': {
      const flips = rng.between(1, 8);
      for (let i = 0; i < flips; i++) {
        const at = rng.int(out.length);
        out[at] = (out[at] ?? 0) ^ (1 << rng.int(8));
      }
      return out;
    }
    case 'byte-set':
      out[rng.int(out.length)] = rng.chance(0.5) ? rng.pick(INTERESTING_BYTES) : rng.int(256);
      return out;
    case 'insert': {
      const at = position(rng, out.length);
      return Buffer.concat([out.subarray(0, at), insertion(rng), out.subarray(at)]);
    }
    case 'delete': {
      const at = rng.int(out.length);
      return Buffer.concat([out.subarray(0, at), out.subarray(at + rng.between(1, 16))]);
    }
    case 'repeat-range': {
      const start = rng.int(out.length);
      const range = out.subarray(start, start + rng.between(1, 64));
      const at = position(rng, out.length);
      return Buffer.concat([out.subarray(0, at), range, out.subarray(at)]);
    }
    case 'cut':
      return out.subarray(0, rng.int(out.length));
  }
}

/** One to four random byte edits; returns the bytes and the edits' names. */
export function randomByteEdits(rng: Rng, bytes: Buffer): { bytes: Buffer; ops: ByteEdit[] } {
  const ops: ByteEdit[] = [];
  let out = bytes;
  const count = rng.weighted<number>([
    [1, 6],
    [2, 3],
    [4, 1],
  ]);
  for (let i = 0; i < count; i++) {
    const edit = rng.pick(BYTE_EDITS.filter((e) => e !== 'cut' || rng.chance(0.3)));
    ops.push(edit);
    out = applyByteEdit(rng, out, edit);
  }
  return { bytes: out, ops };
}
