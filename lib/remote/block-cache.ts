// The local block cache of a remote base: blocks fetched from the origin, kept on disk across
// restarts, the least recently used evicted past the size limit. Two files in the cache
// directory, named after the image (`<file>-<hash of its URL>`), and a lock beside them:
//
//   .data   slot i holds one block of the image at i × blockSize (a sparse file: slots never
//           filled take no disk). There are capacity ÷ blockSize slots, so the file never
//           grows past --cache-size.
//   .map    a 4 KiB header (a magic line, then JSON: the image's size and fingerprint, the
//           block size, the number of slots), then one 24-byte entry per slot: the block it
//           holds + 1 (u64; an entry of zeros is an empty slot), when it was last used (f64, a
//           counter), the CRC-32 of those 16 bytes (u32), and 4 bytes of zeros.
//   .lock   the pid of the server using the cache (overlay-lock.ts): one process per cache.
//
// Crash safety comes from the order of writes, not from checking blocks: every entry on disk
// names a slot whose data is already on disk, so a server that opens the cache after any crash
// (a killed process, a lost power supply) trusts every entry it finds.
// - A fetched block's data is written at once, and served from then on, but its entry is not.
//   Entries are written at a checkpoint: the data file is flushed (fdatasync), then the entries
//   of the blocks written before the flush began go to the map. A checkpoint runs once no block
//   was kept for CHECKPOINT_QUIET_MS, CHECKPOINT_MAX_AGE_MS after the oldest block not in the map
//   was kept, every CHECKPOINT_BYTES kept, and at close. What a crash loses is the blocks kept
//   since the last checkpoint: they are fetched again. Quiet, not every 64 MiB: a flush in the
//   middle of a burst of fetches (16 guests booting) stalled the cache's writes on this host's
//   ext4 and raised the 16 clients' p99 latency by about a third.
// - A slot whose entry was written is emptied on disk (its entry zeroed, the map flushed)
//   before another block's data goes into it. Evictions are done in batches for that: one flush
//   of the map empties up to RECLAIM_BATCH slots.
// - An entry's own CRC-32 catches one torn by a crash in the middle of its write (24 bytes can
//   straddle two sectors), and a load zeroes on disk every entry it does not take, so none can
//   come back to life later.
// The data itself is not checksummed: a CRC-32 of every block fetched cost the cold read about
// 10 % of the event loop's CPU (0.2-0.3 s per GiB here), and the order of writes makes it
// unneeded. Version 2 of the map relied on that CRC instead: its caches start empty.
//
// A map made for another version of the image (size, ETag or Last-Modified differ), another
// block size or another number of slots is discarded whole: the cache starts empty.

import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import type { BaseIdentity } from '../block/base-image.js';
import { codedError } from '../block/coded-error.js';
import { DataFile } from '../block/data-file.js';
import type { InlineIoGuard } from '../block/inline-io-guard.js';
import { acquireOverlayLock, type OverlayLock } from '../block/overlay-lock.js';
import { SerialQueue } from '../block/serial-queue.js';
import { O_CREAT_EXCL_RDWR, O_RDWR } from '../block/syscalls.js';

const MAGIC_STEM = 'nbd-cow block cache v';
const MAGIC = `${MAGIC_STEM}3\n`;
export const MAP_HEADER_BYTES = 4096;
export const ENTRY_BYTES = 24;
const CHECKED_BYTES = 16;
const EMPTY = -1;
/** Kept bytes between checkpoints, at most. */
const CHECKPOINT_BYTES = 1024 * 1024 * 1024;
/** A checkpoint runs once no block was kept for this long… */
const CHECKPOINT_QUIET_MS = 2000;
/** …or once the oldest block not in the map was kept this long ago. */
const CHECKPOINT_MAX_AGE_MS = 60_000;
/** The most slots one eviction empties with one flush of the map. */
const RECLAIM_BATCH = 256;

export interface BlockCacheOptions {
  readonly dir: string;
  /** File name stem for this image's files. */
  readonly stem: string;
  readonly identity: BaseIdentity;
  readonly blockSize: number;
  /** Bytes the cache may hold; at least one block. */
  readonly capacity: number;
  readonly warn: (message: string) => void;
  /** Bytes kept between checkpoints (CHECKPOINT_BYTES by default). */
  readonly checkpointBytes?: number;
}

interface MapHeader {
  readonly size: number;
  readonly fingerprint: string;
  readonly blockSize: number;
  readonly slots: number;
}

function encodeHeader(header: MapHeader): Buffer {
  const text = `${MAGIC}${JSON.stringify(header)}\n`;
  const buf = Buffer.alloc(MAP_HEADER_BYTES);
  buf.write(text, 'utf8');
  return buf;
}

/** The map's header; 'other version' for a map of another format version, undefined for no map at all. */
function decodeHeader(buf: Buffer): MapHeader | 'other version' | undefined {
  const text = buf.toString('utf8').replace(/\0+$/, '');
  if (!text.startsWith(MAGIC)) return text.startsWith(MAGIC_STEM) ? 'other version' : undefined;
  try {
    const value = JSON.parse(text.slice(MAGIC.length)) as Partial<MapHeader>;
    const { size, fingerprint, blockSize, slots } = value;
    if (
      typeof size !== 'number' ||
      typeof fingerprint !== 'string' ||
      typeof blockSize !== 'number' ||
      typeof slots !== 'number'
    ) {
      return undefined;
    }
    return { size, fingerprint, blockSize, slots };
  } catch {
    return undefined;
  }
}

/** Blocks `block`… held in slots `slot`…, `count` of each, consecutive. */
interface Run {
  readonly block: number;
  readonly slot: number;
  count: number;
}

/** A slot whose block is written but not in the map yet; `write` tells its data writes apart. */
interface Unrecorded {
  readonly slot: number;
  readonly block: number;
  readonly write: number;
}

/** A map entry at `at`: the block + 1 (zeros: empty), its last use, the CRC-32 of those 16 bytes. */
function encodeEntry(buf: Buffer, at: number, block: number, lastUse: number): void {
  if (block === EMPTY) {
    buf.fill(0, at, at + ENTRY_BYTES);
    return;
  }
  buf.writeBigUInt64BE(BigInt(block + 1), at);
  buf.writeDoubleBE(lastUse, at + 8);
  buf.writeUInt32BE(crc32(buf.subarray(at, at + CHECKED_BYTES)), at + CHECKED_BYTES);
  buf.writeUInt32BE(0, at + CHECKED_BYTES + 4);
}

/** The block and last use an entry names; undefined for an empty slot or an entry that fails its check. */
function decodeEntry(buf: Buffer, at: number): { block: number; lastUse: number } | undefined {
  const block = Number(buf.readBigUInt64BE(at)) - 1;
  if (block < 0) return undefined;
  if (crc32(buf.subarray(at, at + CHECKED_BYTES)) !== buf.readUInt32BE(at + CHECKED_BYTES)) return undefined;
  return { block, lastUse: buf.readDoubleBE(at + 8) };
}

function sameHeader(a: MapHeader, b: MapHeader): boolean {
  return a.size === b.size && a.fingerprint === b.fingerprint && a.blockSize === b.blockSize && a.slots === b.slots;
}

export class BlockCache {
  readonly blockSize: number;
  readonly slots: number;
  readonly dataPath: string;
  readonly #data: DataFile;
  readonly #map: DataFile;
  /** The map's writes and flushes, in order: an entry zeroed after one was written stays zeroed. */
  readonly #mapWrites = new SerialQueue();
  readonly #lock: OverlayLock;
  readonly #checkpointBytes: number;
  /** Per slot: the block it holds, or EMPTY. */
  readonly #blockOf: Float64Array;
  readonly #lastUse: Float64Array;
  /** Per slot: 1 when the map may name a block there, so it is emptied on disk before reuse. */
  readonly #inMap: Uint8Array;
  /** Per slot: data writes into it so far. */
  readonly #writes: Uint32Array;
  /** Per slot: reads of it in progress (a pinned slot is never reused). */
  readonly #pins: Uint32Array;
  /** Block → slot, least recently used first (a Map keeps insertion order). */
  readonly #slotOf = new Map<number, number>();
  /** Slots empty on disk, the next to use last. */
  readonly #free: number[] = [];
  /** Kept blocks whose entries wait for the next checkpoint, by slot. */
  readonly #unrecorded = new Map<number, Unrecorded>();
  readonly #warn: (message: string) => void;
  #unrecordedBytes = 0;
  /** performance.now() when the oldest block not in the map was kept. */
  #unrecordedSince: number | undefined;
  #checkpointTimer: NodeJS.Timeout | undefined;
  #checkpointing: Promise<void> | undefined;
  /** A checkpoint was asked for while one ran. */
  #checkpointAgain = false;
  #reclaiming: Promise<void> | undefined;
  #clock = 0;
  #closed = false;
  #storeFailed = false;

  private constructor(
    options: BlockCacheOptions,
    slots: number,
    files: { data: DataFile; map: DataFile; lock: OverlayLock; dataPath: string },
  ) {
    this.blockSize = options.blockSize;
    this.slots = slots;
    this.dataPath = files.dataPath;
    this.#data = files.data;
    this.#map = files.map;
    this.#lock = files.lock;
    this.#warn = options.warn;
    this.#checkpointBytes = options.checkpointBytes ?? CHECKPOINT_BYTES;
    this.#blockOf = new Float64Array(slots).fill(EMPTY);
    this.#lastUse = new Float64Array(slots);
    this.#inMap = new Uint8Array(slots);
    this.#writes = new Uint32Array(slots);
    this.#pins = new Uint32Array(slots);
  }

  /**
   * Open (or start) the cache of one image in `dir`: take its lock (EBUSY naming the holder when
   * another process has it), read its map, or start empty when the map is missing, damaged or
   * made for something else.
   */
  static async open(options: BlockCacheOptions): Promise<BlockCache> {
    const { dir, stem, blockSize, identity } = options;
    const imageBlocks = Math.ceil(identity.size / blockSize);
    // A capacity of the whole image holds every block, the short last one included.
    const slots = options.capacity >= identity.size ? imageBlocks : Math.max(1, Math.floor(options.capacity / blockSize));
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const lock = await acquireOverlayLock(join(dir, `${stem}.lock`), `block cache ${join(dir, stem)}`);
    const dataPath = join(dir, `${stem}.data`);
    const mapPath = join(dir, `${stem}.map`);
    const opened: DataFile[] = [];
    try {
      const data = await openOrCreate(dataPath);
      opened.push(data);
      const map = await openOrCreate(mapPath);
      opened.push(map);
      const cache = new BlockCache(options, slots, { data, map, lock, dataPath });
      await cache.#load({ size: identity.size, fingerprint: identity.fingerprint, blockSize, slots });
      return cache;
    } catch (err) {
      for (const file of opened) await file.close().catch(() => undefined);
      await lock.release().catch(() => undefined);
      throw codedError((err as NodeJS.ErrnoException).code ?? 'EIO', `block cache in ${dir}: ${(err as Error).message}`);
    }
  }

  /** Blocks held now. */
  get cachedBlocks(): number {
    return this.#slotOf.size;
  }

  /** Whether `block` is held. */
  has(block: number): boolean {
    return this.#slotOf.has(block);
  }

  /**
   * Read `dest.length` bytes of `block`, from `inner` bytes into it, into `dest`; undefined,
   * having done nothing, when the block is not held.
   */
  read(block: number, inner: number, dest: Buffer, guard?: InlineIoGuard): Promise<void> | undefined {
    return this.readSpan(block, 1, inner, dest, guard);
  }

  /**
   * Read `dest.length` bytes from `inner` bytes into block `first` with one file read, when
   * `count` blocks from `first` are held in consecutive slots (as blocks fetched in order are
   * kept); undefined, having done nothing, when they are not.
   */
  readSpan(first: number, count: number, inner: number, dest: Buffer, guard?: InlineIoGuard): Promise<void> | undefined {
    const slot = this.#slotOf.get(first);
    if (slot === undefined) return undefined;
    for (let i = 1; i < count; i++) if (this.#slotOf.get(first + i) !== slot + i) return undefined;
    for (let i = 0; i < count; i++) {
      this.#touch(first + i, slot + i);
      this.#pins[slot + i] = (this.#pins[slot + i] as number) + 1;
    }
    return this.#data.read(dest, slot * this.blockSize + inner, guard).finally(() => {
      for (let i = 0; i < count; i++) this.#pins[slot + i] = (this.#pins[slot + i] as number) - 1;
    });
  }

  /**
   * Keep `data` as blocks `first`, `first + 1`, … (whole blocks; the image's last one shorter),
   * evicting the least recently used blocks not being read when no slot is free; blocks already
   * held are left as they are, and blocks no slot can be found for are not kept. A failure to
   * write (a full disk) is warned about once and leaves those blocks uncached: the cache only
   * ever saves fetches.
   */
  async store(first: number, data: Buffer): Promise<void> {
    const bs = this.blockSize;
    const count = Math.ceil(data.length / bs);
    let missing = 0;
    for (let i = 0; i < count; i++) if (!this.#slotOf.has(first + i)) missing++;
    if (missing > this.#free.length && !this.#closed) await this.#reclaim(missing);
    const runs: Run[] = [];
    for (let i = 0; i < count && !this.#closed; i++) {
      const block = first + i;
      if (this.#slotOf.has(block)) continue;
      const slot = this.#free.pop();
      if (slot === undefined) break;
      const run = runs.at(-1);
      if (run !== undefined && run.block + run.count === block && run.slot + run.count === slot) run.count++;
      else runs.push({ block, slot, count: 1 });
    }
    await Promise.all(
      runs.map((run) => {
        const from = (run.block - first) * bs;
        return this.#storeRun(run, data.subarray(from, Math.min(from + run.count * bs, data.length)));
      }),
    );
  }

  async #storeRun(run: Run, bytes: Buffer): Promise<void> {
    const bs = this.blockSize;
    try {
      // Block by block: a block's write stays small enough to run inline (data-file.ts).
      for (let i = 0; i < run.count; i++) {
        const slot = run.slot + i;
        this.#writes[slot] = (this.#writes[slot] as number) + 1;
        await this.#data.write(bytes.subarray(i * bs, (i + 1) * bs), slot * bs);
      }
    } catch (err) {
      for (let i = run.count - 1; i >= 0; i--) this.#free.push(run.slot + i);
      this.#storeFailedOnce(err as Error);
      return;
    }
    for (let i = 0; i < run.count; i++) {
      const block = run.block + i;
      const slot = run.slot + i;
      if (this.#closed || this.#slotOf.has(block)) {
        this.#free.push(slot);
        continue;
      }
      this.#blockOf[slot] = block;
      this.#touch(block, slot);
      this.#unrecorded.set(slot, { slot, block, write: this.#writes[slot] as number });
    }
    if (this.#closed) return;
    this.#unrecordedBytes += bytes.length;
    const now = performance.now();
    this.#unrecordedSince ??= now;
    if (this.#unrecordedBytes >= this.#checkpointBytes || now - this.#unrecordedSince >= CHECKPOINT_MAX_AGE_MS) {
      this.#checkpoint();
    } else if (this.#checkpointTimer === undefined) {
      this.#checkpointTimer = setTimeout(() => this.#checkpoint(), CHECKPOINT_QUIET_MS).unref();
    } else this.#checkpointTimer.refresh();
  }

  /**
   * Write the entries of the blocks kept so far, once their data is on disk. One checkpoint at a
   * time: asked for while one runs (by any number of stores), one more follows it.
   */
  #checkpoint(): void {
    if (this.#checkpointing !== undefined) {
      this.#checkpointAgain = true;
      return;
    }
    clearTimeout(this.#checkpointTimer);
    this.#checkpointTimer = undefined;
    // After close, whose own flush and full map write cover every block held.
    if (this.#unrecorded.size === 0 || this.#closed) return;
    const written = [...this.#unrecorded.values()];
    this.#unrecorded.clear();
    this.#unrecordedBytes = 0;
    this.#unrecordedSince = undefined;
    this.#checkpointing = (async () => {
      try {
        await this.#data.sync();
        // Blocks evicted (or their slots written again) since are left out: their data may not
        // be the data that was flushed.
        const still = written.filter((u) => this.#blockOf[u.slot] === u.block && this.#writes[u.slot] === u.write);
        await Promise.all(
          slotRuns(still.map((u) => u.slot)).map(([slot, count]) => {
            const entries = Buffer.alloc(count * ENTRY_BYTES);
            for (let i = 0; i < count; i++) {
              this.#inMap[slot + i] = 1;
              this.#encodeEntry(entries, i * ENTRY_BYTES, slot + i);
            }
            return this.#mapWrites.run(() => this.#map.write(entries, MAP_HEADER_BYTES + slot * ENTRY_BYTES));
          }),
        );
      } catch (err) {
        this.#storeFailedOnce(err as Error);
      }
    })().finally(() => {
      this.#checkpointing = undefined;
      if (this.#checkpointAgain) {
        this.#checkpointAgain = false;
        this.#checkpoint();
      }
    });
  }

  /**
   * Make at least `wanted` slots free (when enough are not being read), up to RECLAIM_BATCH,
   * by evicting the least recently used blocks. Slots the map may name are emptied on disk
   * first: their entries zeroed, then the map flushed. One eviction at a time.
   */
  async #reclaim(wanted: number): Promise<void> {
    while (this.#reclaiming !== undefined) await this.#reclaiming;
    if (this.#free.length >= wanted || this.#closed) return;
    const batch = Math.max(wanted - this.#free.length, Math.min(RECLAIM_BATCH, Math.ceil(this.slots / 8)));
    const victims: number[] = [];
    for (const [block, slot] of this.#slotOf) {
      if (victims.length >= batch) break;
      if (this.#pins[slot] !== 0) continue;
      this.#slotOf.delete(block);
      this.#blockOf[slot] = EMPTY;
      this.#unrecorded.delete(slot);
      victims.push(slot);
    }
    const inMap = victims.filter((slot) => this.#inMap[slot] === 1);
    let usable = victims;
    if (inMap.length > 0) {
      const reclaiming = this.#emptyOnDisk(inMap).catch((err: Error) => {
        // Those slots stay out of use: what their entries say on disk is not known.
        this.#storeFailedOnce(err);
        const lost = new Set(inMap);
        usable = victims.filter((slot) => !lost.has(slot));
      });
      this.#reclaiming = reclaiming;
      await reclaiming;
      this.#reclaiming = undefined;
    }
    // Used oldest first: a stream's blocks land in consecutive slots again.
    for (let i = usable.length - 1; i >= 0; i--) this.#free.push(usable[i] as number);
  }

  /** Zero the entries of `slots` and flush the map. */
  async #emptyOnDisk(slots: number[]): Promise<void> {
    await Promise.all(
      slotRuns(slots).map(([slot, count]) =>
        this.#mapWrites.run(() => this.#map.write(Buffer.alloc(count * ENTRY_BYTES), MAP_HEADER_BYTES + slot * ENTRY_BYTES)),
      ),
    );
    await this.#mapWrites.run(() => this.#map.sync());
    for (const slot of slots) this.#inMap[slot] = 0;
  }

  /** Flush the data, then write every entry (last-use times included) and flush the map; then let the lock go. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    clearTimeout(this.#checkpointTimer);
    try {
      await this.#checkpointing;
      await this.#reclaiming;
      await this.#data.sync();
      const table = Buffer.alloc(this.slots * ENTRY_BYTES);
      for (let slot = 0; slot < this.slots; slot++) this.#encodeEntry(table, slot * ENTRY_BYTES, slot);
      await this.#mapWrites.run(() => this.#map.write(table, MAP_HEADER_BYTES));
      await this.#mapWrites.run(() => this.#map.sync());
    } finally {
      await this.#data.close().catch(() => undefined);
      await this.#map.close().catch(() => undefined);
      await this.#lock.release();
    }
  }

  async #load(header: MapHeader): Promise<void> {
    const headerBuf = Buffer.alloc(MAP_HEADER_BYTES);
    await this.#map.read(headerBuf, 0);
    const found = decodeHeader(headerBuf);
    if (found === undefined || found === 'other version' || !sameHeader(found, header)) {
      if (found === 'other version') {
        this.#warn(`block cache ${this.dataPath}: made by another version of nbd-cow; starting empty`);
      } else if (found !== undefined) {
        this.#warn(`block cache ${this.dataPath}: made for another image version or size; starting empty`);
      }
      await this.#data.truncate(0);
      await this.#map.truncate(0);
      await this.#map.write(encodeHeader(header), 0);
      await this.#map.truncate(MAP_HEADER_BYTES + this.slots * ENTRY_BYTES);
      await this.#map.sync();
      for (let slot = this.slots - 1; slot >= 0; slot--) this.#free.push(slot);
      return;
    }
    const table = Buffer.alloc(this.slots * ENTRY_BYTES);
    await this.#map.read(table, MAP_HEADER_BYTES);
    const held: Array<{ slot: number; block: number; lastUse: number }> = [];
    const dropped: number[] = [];
    const imageBlocks = Math.ceil(header.size / header.blockSize);
    for (let slot = 0; slot < this.slots; slot++) {
      const at = slot * ENTRY_BYTES;
      const entry = decodeEntry(table, at);
      if (entry === undefined || entry.block >= imageBlocks || this.#slotOf.has(entry.block) || !Number.isFinite(entry.lastUse)) {
        if (table.subarray(at, at + ENTRY_BYTES).some((byte) => byte !== 0)) dropped.push(slot);
        continue;
      }
      this.#blockOf[slot] = entry.block;
      this.#lastUse[slot] = entry.lastUse;
      this.#inMap[slot] = 1;
      held.push({ slot, ...entry });
      this.#slotOf.set(entry.block, slot);
    }
    // Least recently used first, as the Map must be.
    this.#slotOf.clear();
    held.sort((a, b) => a.lastUse - b.lastUse);
    for (const { slot, block } of held) this.#slotOf.set(block, slot);
    this.#clock = held.at(-1)?.lastUse ?? 0;
    // An entry not taken (torn, or repeating a block) must not count once its slot is reused.
    if (dropped.length > 0) await this.#emptyOnDisk(dropped);
    for (let slot = this.slots - 1; slot >= 0; slot--) if (this.#blockOf[slot] === EMPTY) this.#free.push(slot);
  }

  #storeFailedOnce(err: Error): void {
    if (this.#storeFailed) return;
    this.#storeFailed = true;
    this.#warn(`block cache: cannot keep fetched blocks in ${this.dataPath}: ${err.message}; serving without keeping them`);
  }

  #touch(block: number, slot: number): void {
    this.#lastUse[slot] = ++this.#clock;
    this.#slotOf.delete(block);
    this.#slotOf.set(block, slot);
  }

  #encodeEntry(buf: Buffer, at: number, slot: number): void {
    encodeEntry(buf, at, this.#blockOf[slot] as number, this.#lastUse[slot] as number);
  }
}

/** `slots` as runs of consecutive slots: [first, count] each. */
function slotRuns(slots: number[]): Array<[number, number]> {
  const sorted = [...slots].sort((a, b) => a - b);
  const runs: Array<[number, number]> = [];
  for (const slot of sorted) {
    const last = runs.at(-1);
    if (last !== undefined && last[0] + last[1] === slot) last[1]++;
    else runs.push([slot, 1]);
  }
  return runs;
}

async function openOrCreate(path: string): Promise<DataFile> {
  try {
    return await DataFile.open(path, O_RDWR);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    return DataFile.open(path, O_CREAT_EXCL_RDWR, 0o600);
  }
}
