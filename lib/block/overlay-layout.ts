// What a valid overlay file looks like (doc/overlay-format.md), as pure functions over bytes
// already read: the layout a block size and size give, and the checks every open runs (the
// server's, async or at GO, and `overlay check`). Each failure is an EINVAL-coded Error naming
// the file and the problem; nothing here touches the disk.

import type { BaseIdentity } from './base-image.js';
import { Bitmap, MAP_PAGE_SIZE, mapBytesFor } from './bitmap.js';
import { codedError } from './coded-error.js';
import { decodeOverlayHeader, type OverlayHeader } from './overlay-header.js';
import { blockCount, roundUp } from './ranges.js';

export const MAP_OFFSET = 4096;
export const MIN_BLOCK_SIZE = 512;
/** Largest block: a partial write copies up at most this much, and a block is one buffer in memory. */
export const MAX_BLOCK_SIZE = 1024 * 1024;

export interface OverlayGeometry {
  readonly blockSize: number;
  readonly size: number;
  readonly blocks: number;
  readonly mapOffset: number;
  readonly mapLength: number;
  readonly dataOffset: number;
}

/** Refuse (EINVAL) a block size that is not a power of two from MIN_BLOCK_SIZE to MAX_BLOCK_SIZE. */
export function validateBlockSize(blockSize: number): void {
  const inRange = Number.isInteger(blockSize) && blockSize >= MIN_BLOCK_SIZE && blockSize <= MAX_BLOCK_SIZE;
  if (!inRange || (blockSize & (blockSize - 1)) !== 0) {
    throw codedError('EINVAL', `block size ${blockSize} is not a power of two from ${MIN_BLOCK_SIZE} to ${MAX_BLOCK_SIZE}`);
  }
}

/** Layout for an image of `size` bytes in blocks of `blockSize` (a power of two, 512 B-1 MiB). */
export function overlayGeometry(blockSize: number, size: number): OverlayGeometry {
  validateBlockSize(blockSize);
  if (!Number.isSafeInteger(size) || size < 0) throw codedError('EINVAL', `bad image size ${size}`);
  const blocks = blockCount(size, blockSize);
  const mapLength = Math.max(MAP_PAGE_SIZE, roundUp(mapBytesFor(blocks), MAP_PAGE_SIZE));
  const dataOffset = roundUp(MAP_OFFSET + mapLength, Math.max(blockSize, 4096));
  return { blockSize, size, blocks, mapOffset: MAP_OFFSET, mapLength, dataOffset };
}

function describeBase(size: number, fingerprint: string): string {
  return `size ${size}, fingerprint ${fingerprint.substring(0, 16)}…`;
}

/** Decode the header and check its layout; the geometry the rest of the file follows. */
export function parseOverlayHeader(path: string, buf: Buffer): { header: OverlayHeader; geometry: OverlayGeometry } {
  let header: OverlayHeader;
  let geometry: OverlayGeometry;
  try {
    header = decodeOverlayHeader(buf);
    geometry = overlayGeometry(header.blockSize, header.virtualSize);
  } catch (err) {
    throw codedError('EINVAL', `overlay ${path}: ${(err as Error).message}`);
  }
  const sameLayout =
    header.mapOffset === geometry.mapOffset &&
    header.mapLength === geometry.mapLength &&
    header.dataOffset === geometry.dataOffset;
  if (!sameLayout) throw codedError('EINVAL', `overlay ${path}: layout does not match its block size and size`);
  return { header, geometry };
}

/** Refuse an overlay made for another base, in one line naming both. */
export function checkBaseBinding(path: string, header: OverlayHeader, base: BaseIdentity): void {
  if (header.baseSize === base.size && header.baseFingerprint === base.fingerprint) return;
  throw codedError(
    'EINVAL',
    `overlay ${path} belongs to another base image: ` +
      `made for (${describeBase(header.baseSize, header.baseFingerprint)}), ` +
      `the base is (${describeBase(base.size, base.fingerprint)})`,
  );
}

/** The map over `mapBuf` (mapLength bytes), refusing state 3 and bits set past the last block. */
export function parseOverlayMap(path: string, geometry: OverlayGeometry, mapBuf: Buffer): Bitmap {
  const map = new Bitmap(geometry.blocks, mapBuf);
  const bad = map.findInvalid();
  if (bad >= 0) throw codedError('EINVAL', `overlay ${path}: map has an invalid state for block ${bad}`);
  const used = mapBytesFor(geometry.blocks);
  const spare = geometry.blocks & 3;
  const lastByte = used > 0 ? (mapBuf[used - 1] as number) : 0; // used - 1 < mapBuf.length
  const tailBits = spare === 0 ? 0 : lastByte >> (spare * 2);
  const trailing = mapBuf.subarray(used).findIndex((b) => b !== 0);
  if (tailBits !== 0 || trailing >= 0) {
    throw codedError('EINVAL', `overlay ${path}: map has bits set past the last block (${geometry.blocks})`);
  }
  return map;
}
