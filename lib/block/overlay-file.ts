// The overlay file on disk: header, block-state map, data region (doc/overlay-format.md).
//
//   [0, 128)                     header (overlay-header.ts)
//   [mapOffset, +mapLength)      map, 2 bits per block; mapOffset = 4096, length in 4 KiB pages
//   [dataOffset, ...)            block X's bytes at dataOffset + X * blockSize (sparse file)
//
// dataOffset = roundUp(mapOffset + mapLength, max(blockSize, 4096)). No lookup table: a block's
// place is fixed, so consecutive blocks are contiguous and a run is one pread/pwrite.
//
// Ordering: data reaches the file before the map says "data" (cow-device.ts), and flush() makes
// data durable before the map pages that point at it: snapshot dirty pages, fdatasync, write
// the snapshot, fdatasync. Flushes are serialized so each one covers all writes before it.
// The dirty flag is set at create and cleared only by markClean() (crash recovery, issue 4).

import type { BaseIdentity } from './base-image.js';
import { Bitmap, mapBytesFor, MAP_PAGE_SIZE } from './bitmap.js';
import {
  closeFile,
  openFile,
  readAt,
  syncData,
  truncateFile,
  unlinkFile,
  writeAt,
  O_CREAT_EXCL_RDWR,
  O_RDWR,
  type Fd,
} from './file.js';
import {
  decodeOverlayHeader,
  encodeOverlayHeader,
  OVERLAY_HEADER_LENGTH,
  type OverlayHeader,
} from './overlay-header.js';
import { blockCount, roundUp } from './ranges.js';

export const MAP_OFFSET = 4096;
export const MIN_BLOCK_SIZE = 512;
export const MAX_BLOCK_SIZE = 16 * 1024 * 1024;

export interface OverlayGeometry {
  readonly blockSize: number;
  readonly size: number;
  readonly blocks: number;
  readonly mapOffset: number;
  readonly mapLength: number;
  readonly dataOffset: number;
}

export interface CreateOverlayOptions {
  readonly blockSize: number;
  /** Virtual size in bytes (today always the base size). */
  readonly size: number;
  readonly baseIdentity: BaseIdentity;
}

function codedError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

/** Layout for an image of `size` bytes in blocks of `blockSize` (a power of two, 512 B-16 MiB). */
export function overlayGeometry(blockSize: number, size: number): OverlayGeometry {
  const inRange = Number.isInteger(blockSize) && blockSize >= MIN_BLOCK_SIZE && blockSize <= MAX_BLOCK_SIZE;
  if (!inRange || (blockSize & (blockSize - 1)) !== 0) {
    const limits = `from ${MIN_BLOCK_SIZE} to ${MAX_BLOCK_SIZE}`;
    throw codedError('EINVAL', `block size ${blockSize} must be a power of two ${limits}`);
  }
  if (!Number.isSafeInteger(size) || size < 0) throw codedError('EINVAL', `bad image size ${size}`);
  const blocks = blockCount(size, blockSize);
  const mapLength = Math.max(MAP_PAGE_SIZE, roundUp(mapBytesFor(blocks), MAP_PAGE_SIZE));
  const dataOffset = roundUp(MAP_OFFSET + mapLength, Math.max(blockSize, 4096));
  return { blockSize, size, blocks, mapOffset: MAP_OFFSET, mapLength, dataOffset };
}

function describeBase(size: number, fingerprint: string): string {
  return `size ${size}, fingerprint ${fingerprint.substring(0, 16)}…`;
}

export class OverlayFile {
  readonly path: string;
  readonly geometry: OverlayGeometry;
  readonly map: Bitmap;
  readonly #baseIdentity: BaseIdentity;
  #fd: Fd;
  #dirty: boolean;
  #closed = false;
  /** Tail of the flush chain: flushes run one after another. */
  #flushing: Promise<void> = Promise.resolve();

  /** The dirty flag when this object was made: for open(), set means not closed cleanly. */
  readonly wasDirty: boolean;

  private constructor(
    path: string,
    fd: Fd,
    geometry: OverlayGeometry,
    map: Bitmap,
    base: BaseIdentity,
    dirty: boolean,
  ) {
    this.path = path;
    this.wasDirty = dirty;
    this.#fd = fd;
    this.geometry = geometry;
    this.map = map;
    this.#baseIdentity = base;
    this.#dirty = dirty;
  }

  /** Create a new overlay (O_CREAT|O_EXCL, mode 0600), all blocks "base", flagged dirty. */
  static async create(path: string, options: CreateOverlayOptions): Promise<OverlayFile> {
    const geometry = overlayGeometry(options.blockSize, options.size);
    const fd = await openFile(path, O_CREAT_EXCL_RDWR, 0o600);
    const map = new Bitmap(geometry.blocks, Buffer.alloc(geometry.mapLength));
    const overlay = new OverlayFile(path, fd, geometry, map, options.baseIdentity, true);
    try {
      await writeAt(fd, overlay.#header(true), 0);
      // The map and data region are a hole: zeros, that is every block in state "base".
      await truncateFile(fd, geometry.dataOffset);
    } catch (err) {
      await closeFile(fd).catch(() => undefined);
      await unlinkFile(path).catch(() => undefined);
      throw err;
    }
    return overlay;
  }

  /**
   * Open an existing overlay made for `base`. Refuses (changing nothing on disk) an overlay of
   * another base, a corrupt header or map. `wasDirty` tells whether it was closed cleanly.
   */
  static async open(path: string, base: BaseIdentity): Promise<OverlayFile> {
    const fd = await openFile(path, O_RDWR);
    try {
      const buf = Buffer.alloc(OVERLAY_HEADER_LENGTH);
      await readAt(fd, buf, 0);
      let header: OverlayHeader;
      try {
        header = decodeOverlayHeader(buf);
      } catch (err) {
        throw codedError('EINVAL', `overlay ${path}: ${(err as Error).message}`);
      }
      if (header.baseSize !== base.size || header.baseFingerprint !== base.fingerprint) {
        throw codedError(
          'EINVAL',
          `overlay ${path} belongs to another base image: ` +
            `made for (${describeBase(header.baseSize, header.baseFingerprint)}), ` +
            `the base is (${describeBase(base.size, base.fingerprint)})`,
        );
      }
      const geometry = overlayGeometry(header.blockSize, header.virtualSize);
      const sameLayout =
        header.mapOffset === geometry.mapOffset &&
        header.mapLength === geometry.mapLength &&
        header.dataOffset === geometry.dataOffset;
      if (!sameLayout) {
        throw codedError('EINVAL', `overlay ${path}: layout does not match its block size and size`);
      }
      const mapBuf = Buffer.alloc(geometry.mapLength);
      await readAt(fd, mapBuf, geometry.mapOffset);
      const map = new Bitmap(geometry.blocks, mapBuf);
      const bad = map.findInvalid();
      if (bad >= 0) throw codedError('EINVAL', `overlay ${path}: map has an invalid state for block ${bad}`);
      return new OverlayFile(path, fd, geometry, map, base, header.dirty);
    } catch (err) {
      await closeFile(fd).catch(() => undefined);
      throw err;
    }
  }

  get blockSize(): number {
    return this.geometry.blockSize;
  }

  get dirty(): boolean {
    return this.#dirty;
  }

  /** Read data-region bytes for virtual offset `offset` into `dest`. */
  readData(offset: number, dest: Buffer): Promise<void> {
    return readAt(this.#fd, dest, this.geometry.dataOffset + offset);
  }

  /** Write `data` at virtual offset `offset` in the data region. The map is not touched. */
  writeData(offset: number, data: Buffer): Promise<void> {
    return writeAt(this.#fd, data, this.geometry.dataOffset + offset);
  }

  /** Make all completed writes durable: data first, then the map pages that describe it. */
  flush(): Promise<void> {
    const run = this.#flushing.then(() => this.#flushOnce());
    this.#flushing = run.catch(() => undefined);
    return run;
  }

  /** Flush, then clear the dirty flag durably (orderly shutdown of a kept overlay). */
  async markClean(): Promise<void> {
    await this.flush();
    await this.#writeHeader(false);
  }

  /** Set the dirty flag durably before the overlay is modified again. */
  async markDirty(): Promise<void> {
    if (!this.#dirty) await this.#writeHeader(true);
  }

  /** Close the descriptor; the file stays. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#flushing;
    await closeFile(this.#fd);
  }

  /** Close and remove the file. Idempotent. */
  async delete(): Promise<void> {
    const first = !this.#closed;
    await this.close();
    if (!first) return;
    try {
      await unlinkFile(this.path);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    }
  }

  async #flushOnce(): Promise<void> {
    const pages = this.map.takeDirtyPages();
    // Snapshot now: blocks that become "data" after this point may not be durable yet.
    const copies = pages.map((p) => Buffer.from(this.map.buffer.subarray(p * MAP_PAGE_SIZE, (p + 1) * MAP_PAGE_SIZE)));
    try {
      await syncData(this.#fd);
      if (pages.length === 0) return;
      const { mapOffset } = this.geometry;
      // copies[i] exists: copies was mapped from pages.
      await Promise.all(pages.map((p, i) => writeAt(this.#fd, copies[i] as Buffer, mapOffset + p * MAP_PAGE_SIZE)));
      await syncData(this.#fd);
    } catch (err) {
      this.map.markPagesDirty(pages);
      throw err;
    }
  }

  async #writeHeader(dirty: boolean): Promise<void> {
    await writeAt(this.#fd, this.#header(dirty), 0);
    await syncData(this.#fd);
    this.#dirty = dirty;
  }

  #header(dirty: boolean): Buffer {
    const g = this.geometry;
    return encodeOverlayHeader({
      blockSize: g.blockSize,
      virtualSize: g.size,
      baseSize: this.#baseIdentity.size,
      baseFingerprint: this.#baseIdentity.fingerprint,
      dirty,
      mapOffset: g.mapOffset,
      mapLength: g.mapLength,
      dataOffset: g.dataOffset,
    });
  }
}
