// Pure encode/decode of the fixed-newstyle handshake (proto.md "Newstyle negotiation"):
// greeting, client flags, option requests, option replies and their payloads. No I/O.

import {
  IHAVEOPT,
  MAX_STRING_LENGTH,
  NBD_INFO_BLOCK_SIZE,
  type NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  type NBD_INFO_NAME,
  NBD_REP_ERR_INVALID,
  NBD_REP_MAGIC,
  NBDMAGIC,
} from './constants.js';
import { OptionError, ProtocolError } from './errors.js';

export const GREETING_SIZE = 18;
export const CLIENT_FLAGS_SIZE = 4;
export const OPTION_HEADER_SIZE = 16;
export const OPTION_REPLY_HEADER_SIZE = 20;

// [0..7] NBDMAGIC · [8..15] IHAVEOPT · [16..17] handshake flags
export function encodeGreeting(handshakeFlags: number): Buffer {
  const buf = Buffer.allocUnsafe(GREETING_SIZE);
  buf.writeBigUInt64BE(NBDMAGIC, 0);
  buf.writeBigUInt64BE(IHAVEOPT, 8);
  buf.writeUInt16BE(handshakeFlags, 16);
  return buf;
}

// [0..3] client flags
export function decodeClientFlags(buf: Buffer, offset = 0): number {
  return buf.readUInt32BE(offset);
}

export interface OptionHeader {
  readonly option: number;
  readonly length: number;
}

// [0..7] IHAVEOPT · [8..11] option · [12..15] data length
export function decodeOptionHeader(buf: Buffer, offset = 0): OptionHeader {
  const magic = buf.readBigUInt64BE(offset);
  if (magic !== IHAVEOPT) {
    throw new ProtocolError(`bad option magic 0x${magic.toString(16)}`);
  }
  return { option: buf.readUInt32BE(offset + 8), length: buf.readUInt32BE(offset + 12) };
}

export function encodeOptionHeader(option: number, length: number): Buffer {
  const buf = Buffer.allocUnsafe(OPTION_HEADER_SIZE);
  buf.writeBigUInt64BE(IHAVEOPT, 0);
  buf.writeUInt32BE(option, 8);
  buf.writeUInt32BE(length, 12);
  return buf;
}

// [0..7] NBD_REP_MAGIC · [8..11] option · [12..15] reply type · [16..19] length · payload
export function encodeOptionReply(option: number, replyType: number, payload?: Buffer): Buffer {
  const length = payload?.length ?? 0;
  const buf = Buffer.allocUnsafe(OPTION_REPLY_HEADER_SIZE + length);
  buf.writeBigUInt64BE(NBD_REP_MAGIC, 0);
  buf.writeUInt32BE(option, 8);
  buf.writeUInt32BE(replyType >>> 0, 12);
  buf.writeUInt32BE(length, 16);
  payload?.copy(buf, OPTION_REPLY_HEADER_SIZE);
  return buf;
}

export interface OptionReply {
  readonly option: number;
  readonly replyType: number;
  readonly payload: Buffer;
}

/** Decode one option reply (used by tests and tools); `buf` must hold the whole reply. */
export function decodeOptionReply(buf: Buffer, offset = 0): OptionReply {
  const magic = buf.readBigUInt64BE(offset);
  if (magic !== NBD_REP_MAGIC) throw new ProtocolError(`bad option reply magic 0x${magic.toString(16)}`);
  const length = buf.readUInt32BE(offset + 16);
  const start = offset + OPTION_REPLY_HEADER_SIZE;
  if (buf.length < start + length) throw new ProtocolError('truncated option reply');
  return {
    option: buf.readUInt32BE(offset + 8),
    replyType: buf.readUInt32BE(offset + 12),
    payload: buf.subarray(start, start + length),
  };
}

// Reply to NBD_OPT_EXPORT_NAME: [0..7] size · [8..9] transmission flags · [10..133] zeroes
export function encodeExportNameReply(size: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const buf = Buffer.alloc(noZeroes ? 10 : 134);
  buf.writeBigUInt64BE(BigInt(size), 0);
  buf.writeUInt16BE(transmissionFlags, 8);
  return buf;
}

// NBD_INFO_EXPORT: [0..1] type 0 · [2..9] size · [10..11] transmission flags
export function encodeInfoExport(size: number, transmissionFlags: number): Buffer {
  const buf = Buffer.allocUnsafe(12);
  buf.writeUInt16BE(NBD_INFO_EXPORT, 0);
  buf.writeBigUInt64BE(BigInt(size), 2);
  buf.writeUInt16BE(transmissionFlags, 10);
  return buf;
}

// NBD_INFO_NAME / NBD_INFO_DESCRIPTION: [0..1] type · [2..] UTF-8 text
export function encodeInfoText(infoType: typeof NBD_INFO_NAME | typeof NBD_INFO_DESCRIPTION, text: string): Buffer {
  const body = Buffer.from(text, 'utf8');
  const buf = Buffer.allocUnsafe(2 + body.length);
  buf.writeUInt16BE(infoType, 0);
  body.copy(buf, 2);
  return buf;
}

// NBD_INFO_BLOCK_SIZE: [0..1] type 3 · [2..5] minimum · [6..9] preferred · [10..13] maximum payload
export function encodeInfoBlockSize(minimum: number, preferred: number, maximum: number): Buffer {
  const buf = Buffer.allocUnsafe(14);
  buf.writeUInt16BE(NBD_INFO_BLOCK_SIZE, 0);
  buf.writeUInt32BE(minimum, 2);
  buf.writeUInt32BE(preferred, 6);
  buf.writeUInt32BE(maximum, 10);
  return buf;
}

// NBD_REP_SERVER payload: [0..3] name length · name · description
export function encodeServerReplyPayload(name: string, description: string): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const descBytes = Buffer.from(description, 'utf8');
  const buf = Buffer.allocUnsafe(4 + nameBytes.length + descBytes.length);
  buf.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(buf, 4);
  descBytes.copy(buf, 4 + nameBytes.length);
  return buf;
}

// NBD_REP_META_CONTEXT payload: [0..3] context id · name
export function encodeMetaContextPayload(contextId: number, name: string): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const buf = Buffer.allocUnsafe(4 + nameBytes.length);
  buf.writeUInt32BE(contextId, 0);
  nameBytes.copy(buf, 4);
  return buf;
}

/** Bounds-checked reader over an option payload; any overrun is an NBD_REP_ERR_INVALID. */
class PayloadReader {
  #buf: Buffer;
  #pos = 0;
  constructor(buf: Buffer) {
    this.#buf = buf;
  }
  get remaining(): number {
    return this.#buf.length - this.#pos;
  }
  u16(what: string): number {
    this.#need(2, what);
    const value = this.#buf.readUInt16BE(this.#pos);
    this.#pos += 2;
    return value;
  }
  u32(what: string): number {
    this.#need(4, what);
    const value = this.#buf.readUInt32BE(this.#pos);
    this.#pos += 4;
    return value;
  }
  string(length: number, what: string): string {
    if (length > MAX_STRING_LENGTH) {
      throw new OptionError(NBD_REP_ERR_INVALID, `${what} is longer than ${MAX_STRING_LENGTH} bytes`);
    }
    this.#need(length, what);
    const bytes = this.#buf.subarray(this.#pos, this.#pos + length);
    this.#pos += length;
    if (bytes.includes(0)) throw new OptionError(NBD_REP_ERR_INVALID, `${what} contains a NUL byte`);
    return bytes.toString('utf8');
  }
  #need(n: number, what: string): void {
    if (this.remaining < n) {
      throw new OptionError(NBD_REP_ERR_INVALID, `option data too short for ${what}`);
    }
  }
}

export interface InfoRequest {
  readonly exportName: string;
  readonly infoTypes: readonly number[];
}

// NBD_OPT_INFO / NBD_OPT_GO data: [0..3] name length · name · [..+2] count N · N × u16 info type
export function decodeInfoRequest(payload: Buffer): InfoRequest {
  const reader = new PayloadReader(payload);
  const exportName = reader.string(reader.u32('export name length'), 'export name');
  const count = reader.u16('information request count');
  const infoTypes: number[] = [];
  for (let i = 0; i < count; i++) infoTypes.push(reader.u16('information request'));
  if (reader.remaining !== 0) {
    throw new OptionError(NBD_REP_ERR_INVALID, 'option data longer than its fields');
  }
  return { exportName, infoTypes };
}

export function encodeInfoRequest(exportName: string, infoTypes: readonly number[]): Buffer {
  const name = Buffer.from(exportName, 'utf8');
  const buf = Buffer.allocUnsafe(4 + name.length + 2 + 2 * infoTypes.length);
  buf.writeUInt32BE(name.length, 0);
  name.copy(buf, 4);
  buf.writeUInt16BE(infoTypes.length, 4 + name.length);
  for (const [i, type] of infoTypes.entries()) buf.writeUInt16BE(type, 6 + name.length + 2 * i);
  return buf;
}

export interface MetaContextRequest {
  readonly exportName: string;
  readonly queries: readonly string[];
}

// LIST/SET_META_CONTEXT data: [0..3] name length · name · [..+4] query count · per query: u32 length · query
export function decodeMetaContextRequest(payload: Buffer): MetaContextRequest {
  const reader = new PayloadReader(payload);
  const exportName = reader.string(reader.u32('export name length'), 'export name');
  const count = reader.u32('query count');
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    queries.push(reader.string(reader.u32('query length'), 'query'));
  }
  if (reader.remaining !== 0) {
    throw new OptionError(NBD_REP_ERR_INVALID, 'option data longer than its fields');
  }
  return { exportName, queries };
}

export function encodeMetaContextRequest(exportName: string, queries: readonly string[]): Buffer {
  const parts: Buffer[] = [];
  const name = Buffer.from(exportName, 'utf8');
  const head = Buffer.allocUnsafe(4);
  head.writeUInt32BE(name.length, 0);
  parts.push(head, name);
  const count = Buffer.allocUnsafe(4);
  count.writeUInt32BE(queries.length, 0);
  parts.push(count);
  for (const query of queries) {
    const bytes = Buffer.from(query, 'utf8');
    const len = Buffer.allocUnsafe(4);
    len.writeUInt32BE(bytes.length, 0);
    parts.push(len, bytes);
  }
  return Buffer.concat(parts);
}
