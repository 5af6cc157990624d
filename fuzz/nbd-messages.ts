// What the mutators know of the client's side of the protocol: which message a buffer is, where
// its fields sit (proto.md's layouts), and builders for the messages no recording holds.

import { IHAVEOPT, NBD_CMD_DISC, optionBytes, REQUEST_MAGIC, requestBytes, u16, u32 } from '../test/helpers/raw-nbd/wire.js';

export const NBD_OPT_EXPORT_NAME = 1;
export const NBD_OPT_STARTTLS = 5;
export const NBD_OPT_INFO = 6;
export const NBD_OPT_GO = 7;
export const NBD_OPT_LIST_META_CONTEXT = 9;
export const NBD_OPT_SET_META_CONTEXT = 10;

/** Options whose data starts with an export name (u32 length, name). */
export const NAMED_OPTIONS: readonly number[] = [NBD_OPT_INFO, NBD_OPT_GO, NBD_OPT_LIST_META_CONTEXT, NBD_OPT_SET_META_CONTEXT];

// Option request: [0..7] IHAVEOPT · [8..11] option · [12..15] length · [16..] data
export const OPTION_NUMBER_AT = 8;
export const OPTION_LENGTH_AT = 12;
export const OPTION_DATA_AT = 16;
// Request: [0..3] magic · [4..5] flags · [6..7] type · [8..15] cookie · [16..23] offset · [24..27] length · [28..] payload
export const REQUEST_FLAGS_AT = 4;
export const REQUEST_TYPE_AT = 6;
export const REQUEST_COOKIE_AT = 8;
export const REQUEST_OFFSET_AT = 16;
export const REQUEST_LENGTH_AT = 24;
export const REQUEST_HEADER_SIZE = 28;

export type MessageKind = 'client-flags' | 'option' | 'request' | 'other';

export function kindOf(bytes: Buffer): MessageKind {
  if (bytes.length >= OPTION_DATA_AT && bytes.readBigUInt64BE(0) === IHAVEOPT) return 'option';
  if (bytes.length >= REQUEST_HEADER_SIZE && bytes.readUInt32BE(0) === REQUEST_MAGIC) return 'request';
  if (bytes.length === 4) return 'client-flags';
  return 'other';
}

export function optionOf(bytes: Buffer): number {
  return bytes.readUInt32BE(OPTION_NUMBER_AT);
}

/** An option message with `data` and a length field that matches it. */
export function option(number: number, data: Buffer = Buffer.alloc(0)): Buffer {
  return optionBytes(number, data);
}

/** GO/INFO data from raw name bytes (which may be invalid UTF-8): u32 length, name, u16 count, info types. */
export function infoData(name: Buffer, infoTypes: readonly number[]): Buffer {
  return Buffer.concat([u32(name.length), name, u16(infoTypes.length), ...infoTypes.map(u16)]);
}

/** LIST/SET_META_CONTEXT data from raw bytes: u32 length, name, u32 count, (u32 length, query)…. */
export function metaData(name: Buffer, queries: readonly Buffer[]): Buffer {
  return Buffer.concat([u32(name.length), name, u32(queries.length), ...queries.flatMap((q) => [u32(q.length), q])]);
}

/**
 * The parts of a named option's data: the name and what follows it, or null when its name
 * length field does not fit the data (a message a mutator already damaged).
 */
export function splitNamed(bytes: Buffer): { name: Buffer; rest: Buffer } | null {
  const data = bytes.subarray(OPTION_DATA_AT);
  if (data.length < 4) return null;
  const length = data.readUInt32BE(0);
  if (4 + length > data.length) return null;
  return { name: data.subarray(4, 4 + length), rest: data.subarray(4 + length) };
}

/** The same named option with another export name, the rest of its data kept. */
export function withName(bytes: Buffer, name: Buffer): Buffer | null {
  const parts = splitNamed(bytes);
  if (parts === null) return null;
  return option(optionOf(bytes), Buffer.concat([u32(name.length), name, parts.rest]));
}

export function disc(cookie = 0n): Buffer {
  return requestBytes({ type: NBD_CMD_DISC, cookie });
}
