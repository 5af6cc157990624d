// Hand-made NBD messages for the tests and the benchmark. The wire numbers are written out here
// (not imported from lib/protocol/) so that neither trusts the code under test.

export const NBDMAGIC = 0x4e42444d41474943n;
export const IHAVEOPT = 0x49484156454f5054n;
export const REP_MAGIC = 0x3e889045565a9n;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_MAGIC = 0x67446698;
export const STRUCTURED_MAGIC = 0x668e33ef;
export const NBD_FLAG_FIXED_NEWSTYLE = 1;
export const NBD_FLAG_NO_ZEROES = 2;
export const NBD_OPT_GO = 7;
export const NBD_OPT_STRUCTURED_REPLY = 8;
export const NBD_OPT_SET_META_CONTEXT = 10;
export const NBD_REP_ACK = 1;
export const NBD_REP_INFO = 3;
export const NBD_REP_META_CONTEXT = 4;
export const NBD_REP_FLAG_ERROR = 0x80000000;
export const NBD_INFO_EXPORT = 0;
export const NBD_CMD_READ = 0;
export const NBD_CMD_WRITE = 1;
export const NBD_CMD_DISC = 2;

export function u32(n: number): Buffer {
  const buf = Buffer.alloc(4);
  buf.writeUInt32BE(n >>> 0, 0);
  return buf;
}

export function u16(n: number): Buffer {
  const buf = Buffer.alloc(2);
  buf.writeUInt16BE(n, 0);
  return buf;
}

/** An option request: IHAVEOPT, option, length, data. */
export function optionBytes(option: number, data: Buffer = Buffer.alloc(0), length = data.length): Buffer {
  const head = Buffer.alloc(16);
  head.writeBigUInt64BE(IHAVEOPT, 0);
  head.writeUInt32BE(option, 8);
  head.writeUInt32BE(length >>> 0, 12);
  return Buffer.concat([head, data]);
}

/** GO/INFO data: name length, name, count, info types. */
export function infoRequestData(name: string, infoTypes: readonly number[] = []): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  return Buffer.concat([u32(nameBytes.length), nameBytes, u16(infoTypes.length), ...infoTypes.map(u16)]);
}

/** LIST/SET_META_CONTEXT data: name length, name, query count, queries. */
export function metaContextData(name: string, queries: readonly string[]): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const parts = [u32(nameBytes.length), nameBytes, u32(queries.length)];
  for (const q of queries) {
    const b = Buffer.from(q, 'utf8');
    parts.push(u32(b.length), b);
  }
  return Buffer.concat(parts);
}

export interface RawRequest {
  readonly type: number;
  readonly flags?: number;
  readonly cookie?: bigint;
  readonly offset?: number | bigint;
  readonly length?: number;
  readonly magic?: number;
}

/** A 28-byte request header (payload not included). */
export function requestBytes(req: RawRequest): Buffer {
  const buf = Buffer.alloc(28);
  buf.writeUInt32BE(req.magic ?? REQUEST_MAGIC, 0);
  buf.writeUInt16BE(req.flags ?? 0, 4);
  buf.writeUInt16BE(req.type, 6);
  buf.writeBigUInt64BE(req.cookie ?? 0n, 8);
  buf.writeBigUInt64BE(BigInt(req.offset ?? 0), 16);
  buf.writeUInt32BE(req.length ?? 0, 24);
  return buf;
}
