// Pure encode/decode of the transmission phase (proto.md "Transmission phase"): the 28-byte
// request, the simple reply, and structured reply chunks. Payloads are never copied here:
// encoders return headers and the caller writes header and payload under one cork.

import {
  NBD_REPLY_FLAG_DONE,
  NBD_REPLY_TYPE_BLOCK_STATUS,
  NBD_REPLY_TYPE_ERROR,
  NBD_REPLY_TYPE_NONE,
  NBD_REPLY_TYPE_OFFSET_DATA,
  NBD_REPLY_TYPE_OFFSET_HOLE,
  NBD_REQUEST_MAGIC,
  NBD_SIMPLE_REPLY_MAGIC,
  NBD_STRUCTURED_REPLY_MAGIC,
} from './constants.js';
import { ProtocolError } from './errors.js';

export const REQUEST_SIZE = 28;
export const SIMPLE_REPLY_SIZE = 16;
export const STRUCTURED_HEADER_SIZE = 20;

const TWO_POW_32 = 0x1_0000_0000;

export interface Request {
  readonly flags: number;
  readonly type: number;
  /** Opaque; echoed back unchanged. */
  readonly cookie: bigint;
  /**
   * The 64-bit offset as a number. Values above 2^53 lose precision but stay above every
   * export size, so they fail the range check like any out-of-range request.
   */
  readonly offset: number;
  readonly length: number;
}

// [0..3] magic 0x25609513 · [4..5] flags · [6..7] type · [8..15] cookie · [16..23] offset · [24..27] length
export function decodeRequest(buf: Buffer, at = 0): Request {
  const magic = buf.readUInt32BE(at);
  if (magic !== NBD_REQUEST_MAGIC) {
    throw new ProtocolError(`bad request magic 0x${magic.toString(16).padStart(8, '0')}`);
  }
  return {
    flags: buf.readUInt16BE(at + 4),
    type: buf.readUInt16BE(at + 6),
    cookie: buf.readBigUInt64BE(at + 8),
    offset: buf.readUInt32BE(at + 16) * TWO_POW_32 + buf.readUInt32BE(at + 20),
    length: buf.readUInt32BE(at + 24),
  };
}

export function encodeRequest(request: Request): Buffer {
  const buf = Buffer.allocUnsafe(REQUEST_SIZE);
  buf.writeUInt32BE(NBD_REQUEST_MAGIC, 0);
  buf.writeUInt16BE(request.flags, 4);
  buf.writeUInt16BE(request.type, 6);
  buf.writeBigUInt64BE(request.cookie, 8);
  buf.writeBigUInt64BE(BigInt(request.offset), 16);
  buf.writeUInt32BE(request.length, 24);
  return buf;
}

// [0..3] magic 0x67446698 · [4..7] error · [8..15] cookie  (then READ data on success)
export function encodeSimpleReply(error: number, cookie: bigint): Buffer {
  const buf = Buffer.allocUnsafe(SIMPLE_REPLY_SIZE);
  buf.writeUInt32BE(NBD_SIMPLE_REPLY_MAGIC, 0);
  buf.writeUInt32BE(error, 4);
  buf.writeBigUInt64BE(cookie, 8);
  return buf;
}

export interface SimpleReply {
  readonly error: number;
  readonly cookie: bigint;
}

export function decodeSimpleReply(buf: Buffer, at = 0): SimpleReply {
  const magic = buf.readUInt32BE(at);
  if (magic !== NBD_SIMPLE_REPLY_MAGIC) throw new ProtocolError(`bad simple reply magic 0x${magic.toString(16)}`);
  return { error: buf.readUInt32BE(at + 4), cookie: buf.readBigUInt64BE(at + 8) };
}

// [0..3] magic 0x668e33ef · [4..5] flags · [6..7] type · [8..15] cookie · [16..19] payload length
function structuredHeader(extra: number, flags: number, type: number, cookie: bigint, length: number): Buffer {
  const buf = Buffer.allocUnsafe(STRUCTURED_HEADER_SIZE + extra);
  buf.writeUInt32BE(NBD_STRUCTURED_REPLY_MAGIC, 0);
  buf.writeUInt16BE(flags, 4);
  buf.writeUInt16BE(type, 6);
  buf.writeBigUInt64BE(cookie, 8);
  buf.writeUInt32BE(length, 16);
  return buf;
}

export interface StructuredChunkHeader {
  readonly flags: number;
  readonly type: number;
  readonly cookie: bigint;
  readonly length: number;
}

export function decodeStructuredChunkHeader(buf: Buffer, at = 0): StructuredChunkHeader {
  const magic = buf.readUInt32BE(at);
  if (magic !== NBD_STRUCTURED_REPLY_MAGIC) {
    throw new ProtocolError(`bad structured reply magic 0x${magic.toString(16)}`);
  }
  return {
    flags: buf.readUInt16BE(at + 4),
    type: buf.readUInt16BE(at + 6),
    cookie: buf.readBigUInt64BE(at + 8),
    length: buf.readUInt32BE(at + 16),
  };
}

/** NBD_REPLY_TYPE_NONE with DONE: the final chunk of a reply that carried nothing else. */
export function encodeNoneChunk(cookie: bigint): Buffer {
  return structuredHeader(0, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_NONE, cookie, 0);
}

/**
 * Header of an NBD_REPLY_TYPE_OFFSET_DATA chunk: the 20-byte chunk header plus the 8-byte
 * offset. The `dataLength` bytes of data follow in a separate write.
 */
export function encodeOffsetDataHeader(cookie: bigint, offset: number, dataLength: number, done: boolean): Buffer {
  const buf = structuredHeader(8, done ? NBD_REPLY_FLAG_DONE : 0, NBD_REPLY_TYPE_OFFSET_DATA, cookie, 8 + dataLength);
  buf.writeBigUInt64BE(BigInt(offset), STRUCTURED_HEADER_SIZE);
  return buf;
}

// NBD_REPLY_TYPE_OFFSET_HOLE payload: [0..7] offset · [8..11] hole size
export function encodeOffsetHoleChunk(cookie: bigint, offset: number, holeLength: number, done: boolean): Buffer {
  const buf = structuredHeader(12, done ? NBD_REPLY_FLAG_DONE : 0, NBD_REPLY_TYPE_OFFSET_HOLE, cookie, 12);
  buf.writeBigUInt64BE(BigInt(offset), STRUCTURED_HEADER_SIZE);
  buf.writeUInt32BE(holeLength, STRUCTURED_HEADER_SIZE + 8);
  return buf;
}

// NBD_REPLY_TYPE_ERROR payload: [0..3] error · [4..5] message length · message
export function encodeErrorChunk(cookie: bigint, error: number, message: string): Buffer {
  const text = Buffer.from(message, 'utf8').subarray(0, 4096);
  const buf = structuredHeader(6 + text.length, NBD_REPLY_FLAG_DONE, NBD_REPLY_TYPE_ERROR, cookie, 6 + text.length);
  buf.writeUInt32BE(error, STRUCTURED_HEADER_SIZE);
  buf.writeUInt16BE(text.length, STRUCTURED_HEADER_SIZE + 4);
  text.copy(buf, STRUCTURED_HEADER_SIZE + 6);
  return buf;
}

export interface StatusDescriptor {
  readonly length: number;
  readonly flags: number;
}

// NBD_REPLY_TYPE_BLOCK_STATUS payload: [0..3] context id · N × ([0..3] length · [4..7] status flags)
export function encodeBlockStatusChunk(
  cookie: bigint,
  contextId: number,
  descriptors: readonly StatusDescriptor[],
  done: boolean,
): Buffer {
  const length = 4 + 8 * descriptors.length;
  const buf = structuredHeader(length, done ? NBD_REPLY_FLAG_DONE : 0, NBD_REPLY_TYPE_BLOCK_STATUS, cookie, length);
  buf.writeUInt32BE(contextId, STRUCTURED_HEADER_SIZE);
  let at = STRUCTURED_HEADER_SIZE + 4;
  for (const { length: extentLength, flags } of descriptors) {
    buf.writeUInt32BE(extentLength, at);
    buf.writeUInt32BE(flags >>> 0, at + 4);
    at += 8;
  }
  return buf;
}
