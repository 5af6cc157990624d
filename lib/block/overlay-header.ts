// Pure encode/decode of the 128-byte overlay header (doc/overlay-format.md). No I/O.
// Big-endian throughout, like the NBD wire. The crc32 (node:zlib) covers bytes [0, 124).
//
//   [  0..  7]  magic "NBDCOWOV"
//   [  8.. 11]  format version (1)
//   [ 12.. 15]  header length (128)
//   [ 16.. 19]  block size
//   [ 20.. 23]  flags: bit 0 = dirty, bit 1 = frozen; other bits must be zero
//   [ 24.. 31]  virtual size (bytes)
//   [ 32.. 39]  base size (bytes)
//   [ 40.. 71]  base fingerprint (sha256, 32 bytes)
//   [ 72.. 79]  map offset
//   [ 80.. 87]  map length
//   [ 88.. 95]  data offset
//   [ 96..111]  layer id (16 random bytes, set by freeze; zero while not frozen)
//   [112..123]  reserved, zero
//   [124..127]  crc32 of bytes [0, 124)

import { crc32 } from 'node:zlib';

export const OVERLAY_MAGIC = 'NBDCOWOV';
export const OVERLAY_VERSION = 1;
export const OVERLAY_HEADER_LENGTH = 128;
export const FLAG_DIRTY = 1;
/** Read-only for good (`overlay freeze`): it may serve as a layer and never changes again. */
export const FLAG_FROZEN = 2;
export const LAYER_ID_LENGTH = 16;

const KNOWN_FLAGS = FLAG_DIRTY | FLAG_FROZEN;
const LAYER_ID_OFFSET = 96;
const NO_LAYER_ID = '0'.repeat(LAYER_ID_LENGTH * 2);

const CRC_OFFSET = 124;

export interface OverlayHeader {
  readonly blockSize: number;
  readonly virtualSize: number;
  readonly baseSize: number;
  /** Hex sha256 (64 lowercase digits), as BaseIdentity.fingerprint. */
  readonly baseFingerprint: string;
  /** Set while the on-disk map may lag the data (the overlay is in use or was not closed). */
  readonly dirty: boolean;
  /** Set by freeze: the overlay never changes again and may serve as a layer. */
  readonly frozen?: boolean;
  /** A frozen overlay's id (32 lowercase hex digits): part of its identity as a layer. */
  readonly layerId?: string;
  readonly mapOffset: number;
  readonly mapLength: number;
  readonly dataOffset: number;
}

function headerError(message: string): Error {
  return Object.assign(new Error(`overlay header: ${message}`), { code: 'EINVAL' });
}

function readU64(buf: Buffer, at: number, name: string): number {
  const value = buf.readBigUInt64BE(at);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw headerError(`${name} ${value} is too large`);
  return Number(value);
}

/** Encode `h` into a fresh 128-byte buffer. */
export function encodeOverlayHeader(h: OverlayHeader): Buffer {
  if (!/^[0-9a-f]{64}$/.test(h.baseFingerprint)) {
    throw new RangeError(`base fingerprint must be 64 lowercase hex digits: ${h.baseFingerprint}`);
  }
  const buf = Buffer.alloc(OVERLAY_HEADER_LENGTH);
  buf.write(OVERLAY_MAGIC, 0, 'latin1');
  buf.writeUInt32BE(OVERLAY_VERSION, 8);
  buf.writeUInt32BE(OVERLAY_HEADER_LENGTH, 12);
  buf.writeUInt32BE(h.blockSize, 16);
  const frozen = h.frozen === true;
  if (frozen && (h.layerId === undefined || !/^[0-9a-f]{32}$/.test(h.layerId) || h.layerId === NO_LAYER_ID)) {
    throw new RangeError(`a frozen overlay needs a layer id of 32 lowercase hex digits, not all zero: ${h.layerId}`);
  }
  buf.writeUInt32BE((h.dirty ? FLAG_DIRTY : 0) | (frozen ? FLAG_FROZEN : 0), 20);
  buf.writeBigUInt64BE(BigInt(h.virtualSize), 24);
  buf.writeBigUInt64BE(BigInt(h.baseSize), 32);
  buf.write(h.baseFingerprint, 40, 'hex');
  buf.writeBigUInt64BE(BigInt(h.mapOffset), 72);
  buf.writeBigUInt64BE(BigInt(h.mapLength), 80);
  buf.writeBigUInt64BE(BigInt(h.dataOffset), 88);
  if (frozen) buf.write(h.layerId as string, LAYER_ID_OFFSET, 'hex');
  buf.writeUInt32BE(crc32(buf.subarray(0, CRC_OFFSET)), CRC_OFFSET);
  return buf;
}

/** Decode and check a header at `offset`; throws an EINVAL-coded Error naming the problem. */
export function decodeOverlayHeader(buf: Buffer, offset = 0): OverlayHeader {
  const h = buf.subarray(offset, offset + OVERLAY_HEADER_LENGTH);
  if (h.length < OVERLAY_HEADER_LENGTH) throw headerError(`truncated: ${h.length} of ${OVERLAY_HEADER_LENGTH} bytes`);
  const magic = h.subarray(0, 8);
  if (!magic.equals(Buffer.from(OVERLAY_MAGIC, 'latin1'))) {
    throw headerError(`bad magic 0x${magic.toString('hex')} (not an nbd-cow overlay)`);
  }
  const version = h.readUInt32BE(8);
  if (version !== OVERLAY_VERSION) throw headerError(`unsupported version ${version} (expected ${OVERLAY_VERSION})`);
  const stored = h.readUInt32BE(CRC_OFFSET);
  const actual = crc32(h.subarray(0, CRC_OFFSET));
  if (stored !== actual) {
    throw headerError(`checksum mismatch (stored 0x${stored.toString(16)}, computed 0x${actual.toString(16)})`);
  }
  const headerLength = h.readUInt32BE(12);
  if (headerLength !== OVERLAY_HEADER_LENGTH) throw headerError(`bad header length ${headerLength}`);
  const flags = h.readUInt32BE(20);
  if ((flags & ~KNOWN_FLAGS) !== 0) throw headerError(`unknown flags 0x${flags.toString(16)}`);
  const frozen = (flags & FLAG_FROZEN) !== 0;
  const layerId = h.subarray(LAYER_ID_OFFSET, LAYER_ID_OFFSET + LAYER_ID_LENGTH).toString('hex');
  if (frozen && layerId === NO_LAYER_ID) throw headerError('frozen without a layer id');
  if (frozen && (flags & FLAG_DIRTY) !== 0) throw headerError('both frozen and dirty');
  return {
    blockSize: h.readUInt32BE(16),
    virtualSize: readU64(h, 24, 'virtual size'),
    baseSize: readU64(h, 32, 'base size'),
    baseFingerprint: h.subarray(40, 72).toString('hex'),
    dirty: (flags & FLAG_DIRTY) !== 0,
    frozen,
    ...(frozen ? { layerId } : {}),
    mapOffset: readU64(h, 72, 'map offset'),
    mapLength: readU64(h, 80, 'map length'),
    dataOffset: readU64(h, 88, 'data offset'),
  };
}
