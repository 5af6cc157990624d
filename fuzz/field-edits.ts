// Mutations of one field of one message, where proto.md's layouts put it: length fields set to 0,
// small, huge (2^32-1) or off by one; offsets near 2^64; magics damaged; option and command
// numbers and flags out of range; name lengths and counts inside GO/INFO/meta-context data.

import {
  kindOf,
  NAMED_OPTIONS,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  OPTION_DATA_AT,
  OPTION_LENGTH_AT,
  OPTION_NUMBER_AT,
  optionOf,
  REQUEST_COOKIE_AT,
  REQUEST_FLAGS_AT,
  REQUEST_HEADER_SIZE,
  REQUEST_LENGTH_AT,
  REQUEST_OFFSET_AT,
  REQUEST_TYPE_AT,
  splitNamed,
} from './nbd-messages.js';
import type { Rng } from './prng.js';

export type FieldEdit =
  | 'client-flags'
  | 'option-magic'
  | 'option-number'
  | 'option-length'
  | 'name-length'
  | 'count'
  | 'request-magic'
  | 'command-type'
  | 'command-flags'
  | 'cookie'
  | 'offset'
  | 'length'
  | 'length-framed';

const MiB = 1024 * 1024;
/** The largest WRITE payload resized to match a new length field (bigger ones stay out of step). */
const MAX_FRAMED_PAYLOAD = MiB;

/** Values for a 32-bit length or count: the extremes, the server's limits and their neighbours. */
function length32(rng: Rng, actual: number, exportSize: number): number {
  // biome-ignore format: one value per edge case
  const values = [0, 1, 2, 3, 7, 511, 4095, 0xffff, 0x10000, 0x10001, 32 * MiB, 32 * MiB + 1, 64 * MiB, 64 * MiB + 1,
    exportSize, exportSize + 1, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff, actual - 1, actual + 1];
  const value = rng.chance(0.85) ? rng.pick(values) : rng.u32();
  return Math.max(0, Math.min(0xffffffff, value));
}

/** Offsets near 2^64, 2^63 and 2^53 (where a double stops being exact), and around the export's end. */
function offset64(rng: Rng, exportSize: number): bigint {
  const size = BigInt(exportSize);
  const top = 1n << 64n;
  // biome-ignore format: one value per edge case
  const values = [top - 1n, top - 512n, top - 4096n, top - size, 1n << 63n, (1n << 63n) - 1n, (1n << 53n) - 1n, 1n << 53n,
    (1n << 53n) + 1n, size - 1n, size, size + 1n, size - 4096n, size - 511n, 1n << 32n, (1n << 32n) - 1n];
  return rng.chance(0.85) ? rng.pick(values) : rng.u64();
}

function flipBit(rng: Rng, out: Buffer, start: number, length: number): void {
  const at = start + rng.int(length);
  out[at] = (out[at] ?? 0) ^ (1 << rng.int(8));
}

/** The edits that apply to `bytes`, by the kind of message it is. */
function editsFor(bytes: Buffer): FieldEdit[] {
  switch (kindOf(bytes)) {
    case 'client-flags':
      return ['client-flags'];
    case 'option': {
      const edits: FieldEdit[] = ['option-magic', 'option-number', 'option-length'];
      if (NAMED_OPTIONS.includes(optionOf(bytes)) && splitNamed(bytes) !== null) edits.push('name-length', 'count');
      return edits;
    }
    case 'request':
      return ['request-magic', 'command-type', 'command-flags', 'cookie', 'offset', 'length', 'length-framed'];
    case 'other':
      return [];
  }
}

/** The count after the name: u16 info requests (GO/INFO) or u32 queries (meta contexts). */
function editCount(rng: Rng, out: Buffer): void {
  const parts = splitNamed(out);
  if (parts === null) return;
  const at = OPTION_DATA_AT + 4 + parts.name.length;
  const isInfo = optionOf(out) === NBD_OPT_GO || optionOf(out) === NBD_OPT_INFO;
  if (isInfo && at + 2 <= out.length) {
    const count = out.readUInt16BE(at);
    out.writeUInt16BE(rng.pick([0, 1, 0xffff, (count + 1) & 0xffff, Math.max(0, count - 1), rng.int(0x10000)]), at);
    // And sometimes an info type out of range (proto.md: the server MUST ignore unknown ones).
    if (at + 4 <= out.length && rng.chance(0.5)) out.writeUInt16BE(rng.pick([4, 5, 0x7fff, 0xffff, rng.int(0x10000)]), at + 2);
  } else if (!isInfo && at + 4 <= out.length) {
    out.writeUInt32BE(length32(rng, out.readUInt32BE(at), 0), at);
  }
}

/** A WRITE whose length field and payload both change, so the frame stays in step. */
function reframeWrite(rng: Rng, out: Buffer, exportSize: number): Buffer {
  const length = Math.min(length32(rng, out.readUInt32BE(REQUEST_LENGTH_AT), exportSize), MAX_FRAMED_PAYLOAD);
  out.writeUInt32BE(length, REQUEST_LENGTH_AT);
  const isWrite = out.readUInt16BE(REQUEST_TYPE_AT) === 1;
  if (!isWrite) return out.subarray(0, REQUEST_HEADER_SIZE);
  return Buffer.concat([out.subarray(0, REQUEST_HEADER_SIZE), Buffer.alloc(length, rng.int(256))]);
}

/** Apply one field edit that fits `bytes`; null when no field edit applies to it. */
export function applyFieldEdit(rng: Rng, bytes: Buffer, exportSize: number): { bytes: Buffer; op: FieldEdit } | null {
  const edits = editsFor(bytes);
  if (edits.length === 0) return null;
  const op = rng.pick(edits);
  const out = Buffer.from(bytes);
  switch (op) {
    case 'client-flags':
      out.writeUInt32BE(rng.pick([0, 1, 2, 3, 4, 0x80000003, 0xffffffff, rng.u32()]));
      break;
    case 'option-magic':
      flipBit(rng, out, 0, 8);
      break;
    case 'option-number':
      out.writeUInt32BE(
        rng.pick([0, 4, 11, 12, 13, 0x7fffffff, 0x80000000, 0xffffffff, rng.int(20), rng.u32()]),
        OPTION_NUMBER_AT,
      );
      break;
    case 'option-length':
      out.writeUInt32BE(length32(rng, out.length - OPTION_DATA_AT, 0), OPTION_LENGTH_AT);
      break;
    case 'name-length':
      out.writeUInt32BE(length32(rng, out.readUInt32BE(OPTION_DATA_AT), 0), OPTION_DATA_AT);
      break;
    case 'count':
      editCount(rng, out);
      break;
    case 'request-magic':
      flipBit(rng, out, 0, 4);
      break;
    case 'command-type':
      out.writeUInt16BE(rng.chance(0.7) ? rng.int(16) : rng.int(0x10000), REQUEST_TYPE_AT);
      break;
    case 'command-flags':
      out.writeUInt16BE(rng.chance(0.5) ? 1 << rng.int(16) : rng.int(0x10000), REQUEST_FLAGS_AT);
      break;
    case 'cookie':
      out.writeBigUInt64BE(rng.pick([0n, (1n << 64n) - 1n, rng.u64()]), REQUEST_COOKIE_AT);
      break;
    case 'offset':
      out.writeBigUInt64BE(offset64(rng, exportSize), REQUEST_OFFSET_AT);
      break;
    case 'length':
      out.writeUInt32BE(length32(rng, out.readUInt32BE(REQUEST_LENGTH_AT), exportSize), REQUEST_LENGTH_AT);
      break;
    case 'length-framed':
      return { bytes: reframeWrite(rng, out, exportSize), op };
  }
  return { bytes: out, op };
}
