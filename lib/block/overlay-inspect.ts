// Read an overlay file without disturbing anyone: `overlay info`, `overlay map` and `overlay
// commit` start here. The file is opened O_RDONLY and its lock file only read, so a server that
// has it open goes on undisturbed; what is read is the header and the map on disk, which for an
// overlay in use (or left dirty by a crash) is the last flushed one (doc/overlay-format.md,
// "Crash safety"). The header and map get the same checks as every open (overlay-layout.ts).
//
// overlayExtents() turns the map into coalesced extents, one per run of equal state
// (Bitmap.runOf works four blocks a byte), the last one cut at the virtual size; the counts of
// overlayInfo() are the same runs added up, so the two views always agree.

import type { BaseIdentity } from './base-image.js';
import { type Bitmap, BLOCK_BASE, BLOCK_DATA, BLOCK_ZERO, type BlockState } from './bitmap.js';
import { codedError } from './coded-error.js';
import { DataFile } from './data-file.js';
import type { ExtentState } from './device.js';
import { layerIdentity } from './layer-identity.js';
import { readOverlayHeader, readOverlayMap } from './overlay-file.js';
import { OVERLAY_HEADER_LENGTH, OVERLAY_VERSION, type OverlayHeader } from './overlay-header.js';
import type { OverlayGeometry } from './overlay-layout.js';
import { lockHolder } from './overlay-lock.js';
import { lockFileName } from './overlay-names.js';
import { O_RDONLY } from './syscalls.js';

/** An overlay as read from disk: header, geometry, map, and who (if anyone) holds it. */
export interface InspectedOverlay {
  readonly path: string;
  readonly header: OverlayHeader;
  readonly geometry: OverlayGeometry;
  readonly map: Bitmap;
  /** The file's length (st_size). */
  readonly fileLength: number;
  /** Bytes the file takes on disk (st_blocks × 512). */
  readonly allocatedBytes: number;
  /** The pid of the live process holding its lock, if any. */
  readonly inUseBy: number | undefined;
}

/** One run of equal state: bytes [start, start + length) of the virtual disk. */
export interface OverlayExtent {
  readonly start: number;
  readonly length: number;
  readonly state: ExtentState;
  /** Where a data extent's bytes are in the overlay file; undefined for zero and base. */
  readonly fileOffset: number | undefined;
}

export interface StateCount {
  readonly blocks: number;
  readonly bytes: number;
}

export interface OverlayInfo {
  readonly path: string;
  readonly formatVersion: number;
  readonly blockSize: number;
  readonly virtualSize: number;
  readonly blocks: number;
  readonly base: BaseIdentity;
  readonly data: StateCount;
  readonly zero: StateCount;
  /** Blocks still read from the base image. */
  readonly fromBase: StateCount;
  readonly fileLength: number;
  readonly allocatedBytes: number;
  readonly dirty: boolean;
  /** Frozen: what overlays made on it as a layer record as their base; undefined when not frozen. */
  readonly layer: BaseIdentity | undefined;
  readonly inUseBy: number | undefined;
}

const STATE_NAMES: Readonly<Record<BlockState, ExtentState>> = {
  [BLOCK_BASE]: 'base',
  [BLOCK_DATA]: 'data',
  [BLOCK_ZERO]: 'zero',
};

/** Open the overlay at `path` read-only, read what it says about itself, and close it. */
export async function inspectOverlay(path: string): Promise<InspectedOverlay> {
  const { inspected, file } = await openOverlayReadOnly(path);
  await file.close();
  return inspected;
}

/** inspectOverlay(), keeping the file open for reading its data; the caller closes it. */
export async function openOverlayReadOnly(path: string): Promise<{ inspected: InspectedOverlay; file: DataFile }> {
  let file: DataFile;
  try {
    file = await DataFile.open(path, O_RDONLY);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'EIO';
    throw codedError(code, `cannot open overlay ${path}: ${code === 'ENOENT' ? 'no such file' : code}`);
  }
  try {
    const stats = await file.stat();
    if (!stats.isFile()) throw codedError('EINVAL', `overlay ${path}: not a regular file`);
    if (stats.size < OVERLAY_HEADER_LENGTH) {
      throw codedError('EINVAL', `overlay ${path}: file is ${stats.size} bytes, too short for an overlay header`);
    }
    const { header, geometry } = await readOverlayHeader(file);
    if (stats.size < geometry.dataOffset) {
      throw codedError('EINVAL', `overlay ${path}: file is ${stats.size} bytes, shorter than its header and map`);
    }
    const map = await readOverlayMap(file, geometry);
    const holder = await lockHolder(lockFileName(path));
    const inspected: InspectedOverlay = {
      path,
      header,
      geometry,
      map,
      fileLength: stats.size,
      allocatedBytes: stats.blocks * 512,
      inUseBy: holder?.alive === true ? holder.pid : undefined,
    };
    return { inspected, file };
  } catch (err) {
    await file.close().catch(() => undefined);
    throw err;
  }
}

/** Call `fn(state, block, count)` for each run of equal state over blocks [first, end), in order. */
export function forEachRun(
  map: Bitmap,
  first: number,
  end: number,
  fn: (state: BlockState, block: number, count: number) => void,
): void {
  for (let b = first; b < end; ) {
    const count = map.runOf(b, end - b);
    fn(map.get(b), b, count);
    b += count;
  }
}

/** The map of `inspected` as coalesced extents covering the whole virtual size, in order. */
export function overlayExtents(inspected: Pick<InspectedOverlay, 'geometry' | 'map'>): OverlayExtent[] {
  const { blockSize, size, blocks, dataOffset } = inspected.geometry;
  const out: OverlayExtent[] = [];
  forEachRun(inspected.map, 0, blocks, (state, block, count) => {
    const start = block * blockSize;
    const length = Math.min((block + count) * blockSize, size) - start;
    out.push({ start, length, state: STATE_NAMES[state], fileOffset: state === BLOCK_DATA ? dataOffset + start : undefined });
  });
  return out;
}

/** What `overlay info` reports: the header's fields and the map's blocks and bytes by state. */
export function overlayInfo(inspected: InspectedOverlay): OverlayInfo {
  const { blockSize, size, blocks } = inspected.geometry;
  const counts = { base: { blocks: 0, bytes: 0 }, data: { blocks: 0, bytes: 0 }, zero: { blocks: 0, bytes: 0 } };
  forEachRun(inspected.map, 0, blocks, (state, block, count) => {
    const c = counts[STATE_NAMES[state]];
    c.blocks += count;
    c.bytes += Math.min((block + count) * blockSize, size) - block * blockSize;
  });
  const h = inspected.header;
  return {
    path: inspected.path,
    formatVersion: OVERLAY_VERSION,
    blockSize,
    virtualSize: size,
    blocks,
    base: { size: h.baseSize, fingerprint: h.baseFingerprint },
    data: counts.data,
    zero: counts.zero,
    fromBase: counts.base,
    fileLength: inspected.fileLength,
    allocatedBytes: inspected.allocatedBytes,
    dirty: h.dirty,
    layer: h.frozen === true ? layerIdentity(h) : undefined,
    inUseBy: inspected.inUseBy,
  };
}
