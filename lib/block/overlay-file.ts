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
// Header writes (the dirty flag) join the same chain. The dirty flag is set at create and by
// markDirty() before a reopened overlay changes, and cleared only by markClean() after a flush.

import { dirname } from 'node:path';
import type { BaseIdentity } from './base-image.js';
import { Bitmap, MAP_PAGE_SIZE } from './bitmap.js';
import { codedError } from './coded-error.js';
import { publish, removeFile, syncDirectory } from './control-file.js';
import { DataFile } from './data-file.js';
import { encodeOverlayHeader, OVERLAY_HEADER_LENGTH, type OverlayHeader } from './overlay-header.js';
import {
  checkBaseBinding,
  type OverlayGeometry,
  overlayGeometry,
  parseOverlayHeader,
  parseOverlayMap,
} from './overlay-layout.js';
import { O_CREAT_EXCL_RDWR, O_RDONLY, O_RDWR, unlinkFile } from './syscalls.js';

export interface CreateOverlayOptions {
  readonly blockSize: number;
  /** Virtual size in bytes (today always the base size). */
  readonly size: number;
  readonly baseIdentity: BaseIdentity;
  /** Build it under a temporary name and publish it whole (kept overlays). */
  readonly atomic?: boolean;
}

/** Read and check the header of an open overlay (EINVAL-coded errors name its path). */
export async function readOverlayHeader(file: DataFile): Promise<{ header: OverlayHeader; geometry: OverlayGeometry }> {
  const buf = Buffer.alloc(OVERLAY_HEADER_LENGTH);
  await file.read(buf, 0);
  return parseOverlayHeader(file.path, buf);
}

/** Read and check the map of an open overlay, laid out as `geometry` says. */
export async function readOverlayMap(file: DataFile, geometry: OverlayGeometry): Promise<Bitmap> {
  const buf = Buffer.alloc(geometry.mapLength);
  await file.read(buf, geometry.mapOffset);
  return parseOverlayMap(file.path, geometry, buf);
}

function frozenError(path: string): Error {
  return codedError('EPERM', `overlay ${path} is frozen: it can only serve as a layer below others (--layer ${path})`);
}

/** Whether the file at `path` reads as a frozen overlay (false when it cannot be read as one). */
async function isFrozen(path: string): Promise<boolean> {
  try {
    const file = await DataFile.open(path, O_RDONLY);
    try {
      return (await readOverlayHeader(file)).header.frozen === true;
    } finally {
      await file.close();
    }
  } catch {
    return false;
  }
}

export class OverlayFile {
  readonly path: string;
  readonly geometry: OverlayGeometry;
  readonly map: Bitmap;
  readonly #baseIdentity: BaseIdentity;
  readonly #file: DataFile;
  #dirty: boolean;
  #closed = false;
  /** Tail of the flush chain: flushes and header writes run one after another. */
  #flushing: Promise<void> = Promise.resolve();

  /** The dirty flag when this object was made: for open(), set means not closed cleanly. */
  readonly wasDirty: boolean;

  private constructor(path: string, file: DataFile, geometry: OverlayGeometry, map: Bitmap, base: BaseIdentity, dirty: boolean) {
    this.path = path;
    this.wasDirty = dirty;
    this.#file = file;
    this.geometry = geometry;
    this.map = map;
    this.#baseIdentity = base;
    this.#dirty = dirty;
  }

  /**
   * Create a new overlay (O_CREAT|O_EXCL, mode 0600), all blocks "base", flagged dirty. With
   * `atomic` (kept overlays) it is built as `<path>.new`, made durable, then linked to `path`,
   * so a crash never leaves a half-made file under the real name.
   */
  static async create(path: string, options: CreateOverlayOptions): Promise<OverlayFile> {
    const geometry = overlayGeometry(options.blockSize, options.size);
    const atomic = options.atomic ?? false;
    const where = atomic ? `${path}.new` : path;
    if (atomic) await removeFile(where); // left by a crash during an earlier create; the caller holds the lock
    const file = await DataFile.open(where, O_CREAT_EXCL_RDWR, 0o600);
    const map = new Bitmap(geometry.blocks, Buffer.alloc(geometry.mapLength));
    const overlay = new OverlayFile(path, file, geometry, map, options.baseIdentity, true);
    try {
      await file.write(overlay.#header(true), 0);
      // The map and data region are a hole: zeros, that is every block in state "base".
      await file.truncate(geometry.dataOffset);
      if (atomic) {
        await file.sync();
        await publish(where, path);
        await syncDirectory(dirname(path));
      }
    } catch (err) {
      await file.close().catch(() => undefined);
      await unlinkFile(where).catch(() => undefined);
      throw err;
    }
    return overlay;
  }

  /**
   * Open an existing overlay made for `base`. Refuses (changing nothing on disk) an overlay of
   * another base, a frozen one (a layer, read-only for good), a corrupt header or map. `wasDirty` tells whether it was closed cleanly.
   * Reads the header and the whole map (2 bits per block: 640 KiB for 10 GiB in 4 KiB blocks).
   */
  static async open(path: string, base: BaseIdentity): Promise<OverlayFile> {
    let file: DataFile;
    try {
      file = await DataFile.open(path, O_RDWR);
    } catch (err) {
      // A frozen overlay has no write bits: say why, not just EACCES (root opens it anyway).
      if ((err as NodeJS.ErrnoException).code === 'EACCES' && (await isFrozen(path))) throw frozenError(path);
      throw err;
    }
    try {
      const { header, geometry } = await readOverlayHeader(file);
      if (header.frozen === true) throw frozenError(path);
      checkBaseBinding(path, header, base);
      const map = await readOverlayMap(file, geometry);
      return new OverlayFile(path, file, geometry, map, base, header.dirty);
    } catch (err) {
      await file.close().catch(() => undefined);
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
    return this.#file.read(dest, this.geometry.dataOffset + offset);
  }

  /** Write `data` at virtual offset `offset` in the data region. The map is not touched. */
  writeData(offset: number, data: Buffer): Promise<void> {
    return this.#file.write(data, this.geometry.dataOffset + offset);
  }

  /** Whether writeDataInline() of `length` bytes may run now (the data file's inline I/O guard). */
  canWriteDataInline(length: number): boolean {
    return this.#file.canWriteInline(length);
  }

  /** writeData() on the event loop, with no promise; only after canWriteDataInline() said yes. Throws on failure. */
  writeDataInline(offset: number, data: Buffer): void {
    this.#file.writeInline(data, this.geometry.dataOffset + offset);
  }

  /** writeData() for a payload in pieces, written as they are (pwritev). */
  writeDataChunks(offset: number, chunks: readonly Buffer[]): Promise<void> {
    return this.#file.writev(chunks, this.geometry.dataOffset + offset);
  }

  /** Make all completed writes durable: data first, then the map pages that describe it. */
  flush(): Promise<void> {
    return this.#serial(() => this.#flushOnce());
  }

  /** Flush, then clear the dirty flag durably (orderly shutdown of a kept overlay). */
  markClean(): Promise<void> {
    return this.#serial(async () => {
      await this.#flushOnce();
      if (this.#dirty) await this.#writeHeader(false);
    });
  }

  /** Set the dirty flag durably before the overlay is modified again. */
  markDirty(): Promise<void> {
    return this.#serial(async () => {
      if (!this.#dirty) await this.#writeHeader(true);
    });
  }

  /** Close the descriptor; the file stays. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#flushing;
    await this.#file.close();
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

  /** Run `fn` after every flush and header write queued before it. */
  #serial(fn: () => Promise<void>): Promise<void> {
    const run = this.#flushing.then(fn);
    this.#flushing = run.catch(() => undefined);
    return run;
  }

  async #flushOnce(): Promise<void> {
    const pages = this.map.takeDirtyPages();
    // Snapshot now: blocks that become "data" after this point may not be durable yet.
    const copies = pages.map((p) => Buffer.from(this.map.buffer.subarray(p * MAP_PAGE_SIZE, (p + 1) * MAP_PAGE_SIZE)));
    try {
      await this.#file.sync();
      if (pages.length === 0) return;
      const { mapOffset } = this.geometry;
      // copies[i] exists: copies was mapped from pages.
      await Promise.all(pages.map((p, i) => this.#file.write(copies[i] as Buffer, mapOffset + p * MAP_PAGE_SIZE)));
      await this.#file.sync();
    } catch (err) {
      this.map.markPagesDirty(pages);
      throw err;
    }
  }

  async #writeHeader(dirty: boolean): Promise<void> {
    await this.#file.write(this.#header(dirty), 0);
    await this.#file.sync();
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
