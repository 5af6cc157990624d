// Copy-on-write device: a shared read-only BaseImage plus an overlay file (overlay-file.ts).
// Ephemeral (per-connection): the overlay is created lazily by the first write-type call, so a
// read-only session costs no disk and no map, and close() deletes it. Kept (`keep`, named
// overlays): the overlay may be passed in already open; the first write-type call sets its
// dirty flag durably before anything changes, and close() flushes, clears the flag and keeps
// the file. The base is shared and stays open; its owner closes it.
//
// Reads go by runs of equal block state (one pread per run; base -> base file, data -> overlay,
// zero -> fill) straight into subarrays of the caller's buffer. Write-type calls hold the range
// lock over every block they touch; overlay-writes.ts then splits the range into head/body/tail
// (ranges.ts):
//   - the body of whole blocks is one pwrite (a block's place in the overlay is fixed, so
//     consecutive blocks are contiguous), then the map says "data";
//   - a partial block in state "data" is written in place; one in state "base" or "zero" is
//     read-modify-written (the rest of the block from the base, or zeros), then set to "data".
// Data always reaches the overlay before the map changes. A whole block of zeros is not written
// at all: it becomes "zero", as by a trim; with `elideBaseMatches` a whole block equal to the
// base's goes back to "base" (overlay-writes.ts). A write that needs none of that care (overlay
// ready, no copy-up, no block of zeros, no base to compare with, nothing in flight on its
// blocks, the data file allows inline I/O) is done at once with no promise in between
// (#writeInline): most writes once a workload has warmed up, worth about 10 % of random 4 KiB
// write throughput here. trim and zero turn whole blocks into "zero" without writing data and
// zero-fill partial blocks by RMW; zero with noHole writes real zeros in bounded chunks. FUA is
// a full flush after the write.
//
// Space limits (`space`, space-budget.ts): under the lock, before anything changes, a request
// takes the space of the blocks it will turn into "data" (net of what a trim or zero frees),
// or is refused whole with ENOSPC; a request that fails part way gives back what it did not
// write. Without limits nothing is counted, and the inline path does one more comparison.

import type { BaseImage } from './base-image.js';
import { type Bitmap, BLOCK_BASE, BLOCK_DATA } from './bitmap.js';
import { codedError } from './coded-error.js';
import { type BlockDevice, type Extent, type ExtentState, extentDepth, type WriteOptions, type ZeroOptions } from './device.js';
import { InlineIoGuard } from './inline-io-guard.js';
import { NO_OVERLAY_EVENTS, type OverlayEvents } from './overlay-events.js';
import { OverlayFile } from './overlay-file.js';
import { overlayGeometry } from './overlay-layout.js';
import { OverlayWriter } from './overlay-writes.js';
import { RangeLock, type Release } from './range-lock.js';
import { blockOf, blockSpan, splitRange } from './ranges.js';
import { OverlaySpace, type SpaceLimits } from './space-budget.js';
import { hasZeroBlock } from './write-payload.js';

// The server names and sweeps overlays next to where it creates devices.
export { ephemeralOverlayName, ephemeralOverlayPid, sweepEphemeralOverlays } from './ephemeral.js';

export interface CowDeviceOptions {
  /** The shared base; not closed by the device. */
  readonly base: BaseImage;
  /** Overlay block size: a power of two from 512 B to 1 MiB. */
  readonly blockSize: number;
  /** Where to create the overlay file at the first write-type call; must not exist. */
  readonly overlayPath: string;
  /** An overlay already open (a reopened named overlay); overlayPath is then its path. */
  readonly overlay?: OverlayFile;
  /** Keep the overlay at close (flushed, marked clean) instead of deleting it. */
  readonly keep?: boolean;
  /** Limits on the data the overlay may hold; none when absent. */
  readonly space?: SpaceLimits;
  /** Who hears of copy-ups, zeroed and elided blocks (debug traces, metrics); nobody when absent. */
  readonly events?: OverlayEvents;
  /**
   * Read the base under every whole block a WRITE stores, and store none equal to it (the block
   * goes back to "base"). Off by default: the base read per write cost 15-30 % of write
   * throughput here (README, Performance).
   */
  readonly elideBaseMatches?: boolean;
}

/** Upper bound on the buffer a cache call allocates. */
const CHUNK = 1024 * 1024;

const STATE_NAMES: readonly ExtentState[] = ['base', 'data', 'zero'];

const DONE: Promise<void> = Promise.resolve();

function noop(): void {
  /* Promise.all's array of results is not needed */
}

/** Called for each run of equal block state: bytes [start, end) are in `state`. */
type RunVisitor = (state: number, start: number, end: number) => void;

export class CowDevice implements BlockDevice {
  readonly writable = true;
  readonly #base: BaseImage;
  readonly #blockSize: number;
  readonly #path: string;
  readonly #keep: boolean;
  readonly #lock = new RangeLock();
  #overlay: OverlayFile | undefined;
  #creating: Promise<OverlayFile> | undefined;
  /** The overlay once ready to change (created, or flagged dirty): the fast write path's gate. */
  #ready: OverlayFile | undefined;
  #closing: Promise<void> | undefined;
  /** The data the overlay holds against its limits; undefined when there are none. */
  readonly #space: OverlaySpace | undefined;
  readonly #writer: OverlayWriter;
  /** Inline or threadpool for this device's reads of the shared base (BaseImage.read). */
  readonly #baseGuard = new InlineIoGuard();

  constructor(options: CowDeviceOptions) {
    overlayGeometry(options.blockSize, options.base.size); // validates the block size now
    this.#base = options.base;
    this.#blockSize = options.blockSize;
    this.#path = options.overlayPath;
    this.#keep = options.keep ?? false;
    this.#overlay = options.overlay;
    if (options.overlay !== undefined && options.overlay.geometry.blockSize !== options.blockSize) {
      throw codedError('EINVAL', `overlay ${this.#path} has block size ${options.overlay.geometry.blockSize}`);
    }
    const map = options.overlay?.map;
    const dataBlocks = map === undefined ? 0 : map.countState(0, map.blocks, BLOCK_DATA);
    this.#space =
      options.space === undefined ? undefined : new OverlaySpace(this.#path, options.space, this.#blockSize, dataBlocks);
    this.#writer = new OverlayWriter({
      base: this.#base,
      blockSize: this.#blockSize,
      space: this.#space,
      events: options.events ?? NO_OVERLAY_EVENTS,
      elideBaseMatches: options.elideBaseMatches ?? false,
      baseGuard: this.#baseGuard,
    });
  }

  get size(): number {
    return this.#base.size;
  }

  get overlayPath(): string {
    return this.#path;
  }

  /** Bytes in state "data" in the overlay: its blocks that hold data × the block size. */
  dataBytes(): number {
    const overlay = this.#overlay;
    if (overlay === undefined) return 0;
    const map = overlay.map;
    return map.countState(0, map.blocks, BLOCK_DATA) * this.#blockSize;
  }

  /** Whether the overlay file exists yet (it is created by the first write-type call). */
  get hasOverlay(): boolean {
    return this.#overlay !== undefined;
  }

  read(offset: number, dest: Buffer): Promise<void> {
    if (this.#closing !== undefined) return Promise.reject(this.#closedError());
    const overlay = this.#overlay;
    if (overlay === undefined) return this.#base.read(offset, dest, this.#baseGuard);
    const end = offset + dest.length;
    // Most reads are one run: its one promise is returned as it is (often already settled).
    let first: Promise<void> | undefined;
    let more: Promise<void>[] | undefined;
    this.#forEachRun(overlay.map, offset, end, Infinity, (state, start, runEnd) => {
      const piece = dest.subarray(start - offset, runEnd - offset);
      let read: Promise<void>;
      if (state === BLOCK_BASE) read = this.#base.read(start, piece, this.#baseGuard);
      else if (state === BLOCK_DATA) read = overlay.readData(start, piece);
      else return void piece.fill(0);
      if (first === undefined) first = read;
      else {
        more ??= [first];
        more.push(read);
      }
    });
    if (more !== undefined) return Promise.all(more).then(noop);
    return first ?? DONE;
  }

  write(offset: number, data: Buffer, options: WriteOptions): Promise<void> {
    try {
      if (this.#writeInline(offset, data)) return options.fua ? this.flush() : DONE;
    } catch (err) {
      return Promise.reject(err);
    }
    return this.#writeLater(offset, data, options);
  }

  async #writeLater(offset: number, data: Buffer, options: WriteOptions): Promise<void> {
    await this.#locked(offset, data.length, (overlay) => this.#writer.write(overlay, offset, [data]));
    if (options.fua) await this.flush();
  }

  /**
   * The common write done at once, with no promise: the overlay is ready, no write in flight
   * overlaps, nothing needs a read-modify-write, no whole block is all zeros or needs comparing
   * with the base, and the data file allows inline I/O. Returns false (having done nothing) when
   * any of that fails; the general path then runs.
   */
  #writeInline(offset: number, data: Buffer): boolean {
    const overlay = this.#ready;
    if (overlay === undefined || this.#closing !== undefined || data.length === 0) return false;
    if (!overlay.canWriteDataInline(data.length)) return false;
    const { head, body, tail } = splitRange(offset, data.length, this.#blockSize, this.size);
    const map = overlay.map;
    if (
      (head !== undefined && map.get(head.block) !== BLOCK_DATA) ||
      (tail !== undefined && map.get(tail.block) !== BLOCK_DATA)
    ) {
      return false;
    }
    if (
      body !== undefined &&
      (this.#writer.checksBase || hasZeroBlock(data, body.start - offset, body.end - offset, this.#blockSize))
    ) {
      return false;
    }
    const [first, last] = blockSpan(offset, data.length, this.#blockSize);
    const release = this.#lock.tryHold(first, last);
    if (release === null) return false;
    const space = this.#space;
    let taken = 0;
    try {
      // Only the body can need space (head and tail hold data): refused before a byte is written.
      if (space !== undefined && body !== undefined) taken = space.takeForData(map, body.first, body.count);
      overlay.writeDataInline(offset, data);
      if (body !== undefined) map.setRange(body.first, body.count, BLOCK_DATA);
    } catch (err) {
      space?.give(taken);
      throw err;
    } finally {
      release();
    }
    return true;
  }

  /**
   * A payload in pieces: when it covers whole blocks only (a large aligned write, the common
   * case) the pieces go to the overlay as they are, in one pwritev (a run of them per run of
   * blocks that need data); otherwise they are joined and written as by write().
   */
  async writev(offset: number, chunks: readonly Buffer[], options: WriteOptions): Promise<void> {
    let length = 0;
    for (const chunk of chunks) length += chunk.length;
    const { head, body, tail } = splitRange(offset, length, this.#blockSize, this.size);
    if (head !== undefined || tail !== undefined || body === undefined) {
      return this.write(offset, Buffer.concat(chunks, length), options);
    }
    await this.#locked(offset, length, (overlay) => this.#writer.write(overlay, offset, chunks));
    if (options.fua) await this.flush();
  }

  async zero(offset: number, length: number, options: ZeroOptions): Promise<void> {
    await this.#locked(offset, length, (overlay) =>
      options.noHole
        ? this.#writer.asData(overlay, offset, length, () => this.#writer.writeZeros(overlay, offset, length))
        : this.#writer.punch(overlay, offset, length),
    );
    if (options.fua) await this.flush();
  }

  async trim(offset: number, length: number, options: WriteOptions): Promise<void> {
    await this.#locked(offset, length, (overlay) => this.#writer.punch(overlay, offset, length));
    if (options.fua) await this.flush();
  }

  async flush(): Promise<void> {
    this.#checkOpen();
    // No overlay (or a failed creation): no write ever completed, nothing to make durable.
    const overlay = this.#overlay ?? (await this.#creating?.catch(() => undefined));
    await overlay?.flush();
  }

  async cache(offset: number, length: number): Promise<void> {
    const end = Math.min(offset + length, this.size);
    const buf = Buffer.allocUnsafe(Math.min(CHUNK, Math.max(0, end - offset)));
    for (let pos = offset; pos < end; pos += buf.length) {
      await this.read(pos, buf.subarray(0, Math.min(buf.length, end - pos)));
    }
  }

  /**
   * The overlay's runs, depth 1; a run still in the base is described by the base (one extent
   * for a base file, the layers' own runs for a stack of layers) one level deeper.
   */
  async extents(offset: number, length: number, maxExtents: number): Promise<Extent[]> {
    this.#checkOpen();
    const end = Math.min(offset + length, this.size);
    const max = Math.max(1, maxExtents);
    const overlay = this.#overlay;
    const runs: Array<[number, number, number]> = [];
    if (overlay === undefined) runs.push([BLOCK_BASE, offset, end]);
    else this.#forEachRun(overlay.map, offset, end, max, (state, start, runEnd) => void runs.push([state, start, runEnd]));
    const out: Extent[] = [];
    for (const [state, start, runEnd] of runs) {
      if (out.length >= max) break;
      if (state !== BLOCK_BASE) {
        out.push({ length: runEnd - start, state: STATE_NAMES[state] ?? 'base', depth: 1 });
        continue;
      }
      let covered = start;
      for (const below of await this.#base.extents(start, runEnd - start, max - out.length)) {
        out.push({ ...below, depth: extentDepth(below) + 1 });
        covered += below.length;
      }
      if (covered < runEnd) break; // the base stopped early (its extents ran out): so do we
    }
    return out;
  }

  /**
   * Close the overlay: delete it, or with `keep` flush it, mark it clean and keep it. Idempotent;
   * the server drains requests before calling it.
   */
  close(): Promise<void> {
    this.#closing ??= this.#closeOnce().finally(() => this.#space?.release());
    return this.#closing;
  }

  async #closeOnce(): Promise<void> {
    const ready = await this.#creating?.catch(() => undefined);
    const overlay = this.#overlay ?? ready;
    if (overlay === undefined) return;
    if (!this.#keep) return overlay.delete();
    try {
      // Clean and never written since it was opened: the file is already as it should be.
      if (this.#creating !== undefined || overlay.dirty) await overlay.markClean();
    } finally {
      await overlay.close();
    }
  }

  /** Call `fn(state, start, end)` for each run of equal state in [offset, end), at most `max`. */
  #forEachRun(map: Bitmap, offset: number, end: number, max: number, fn: RunVisitor): void {
    const bs = this.#blockSize;
    const lastBlock = blockOf(end - 1, bs);
    let pos = offset;
    for (let n = 0; pos < end && n < max; n++) {
      const block = blockOf(pos, bs);
      const run = map.runOf(block, lastBlock - block + 1);
      const runEnd = Math.min((block + run) * bs, end);
      fn(map.get(block), pos, runEnd);
      pos = runEnd;
    }
  }

  /** Create the overlay if needed, then run `fn` holding the lock over the range's blocks. */
  async #locked(offset: number, length: number, fn: (overlay: OverlayFile) => Promise<void>): Promise<void> {
    this.#checkOpen();
    if (length === 0) return;
    const [first, last] = blockSpan(offset, length, this.#blockSize);
    // Queue for the blocks now, before waiting for anything: requests keep their issue order,
    // and a later write cannot slip past this one on the fast path (#writeInline).
    const acquired = this.#lock.acquire(first, last);
    let release: Release | undefined;
    try {
      const overlay = await this.#ensureOverlay();
      release = await acquired;
      await fn(overlay);
    } finally {
      (release ?? (await acquired))();
    }
  }

  /** The overlay, ready to change: created, or (if passed in open) flagged dirty first. */
  #ensureOverlay(): Promise<OverlayFile> {
    if (this.#creating === undefined) {
      const opened = this.#overlay;
      const creating =
        opened !== undefined
          ? opened.markDirty().then(() => opened)
          : OverlayFile.create(this.#path, {
              blockSize: this.#blockSize,
              size: this.size,
              baseIdentity: this.#base.identity,
              atomic: this.#keep,
            });
      this.#creating = creating;
      creating.then(
        (overlay) => {
          this.#overlay = overlay;
          this.#ready = overlay;
        },
        () => {
          // Let the next write-type call try again (ENOSPC may pass).
          if (this.#creating === creating) this.#creating = undefined;
        },
      );
    }
    return this.#creating;
  }

  #checkOpen(): void {
    if (this.#closing !== undefined) throw this.#closedError();
  }

  #closedError(): Error {
    return codedError('ESHUTDOWN', `device for ${this.#path} is closed`);
  }
}
