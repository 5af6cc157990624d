// The local block cache of a remote base: blocks fetched from the origin, kept on disk across
// restarts, the least recently used evicted past the size limit. Two files in the cache
// directory, named after the image (`<file>-<hash of its URL>`), and a lock beside them:
//
//   .data   slot i holds one block of the image at i × blockSize (a sparse file: slots never
//           filled take no disk). There are capacity ÷ blockSize slots, so the file never
//           grows past --cache-size.
//   .map    a 4 KiB header (a magic line, then JSON: the image's size and fingerprint, the
//           block size, the number of slots), then one 24-byte entry per slot: the block it
//           holds + 1 (u64, 0 = empty), when it was last used (f64, a counter), the CRC-32 of
//           the block's bytes (u32), and 4 bytes of zeros.
//   .lock   the pid of the server using the cache (overlay-lock.ts): one process per cache.
//
// Nothing is flushed on the way: a block's entry is written after its data, and the checksum is
// what makes that safe. The map's header says whether the cache was closed cleanly (data and map
// flushed, then the header marked clean; it is marked dirty again, and flushed, as a process
// opens it). After a clean close every entry is trusted. After a crash each block is checked
// against its entry's checksum the first time this process reads it; one that does not match (a
// crash between the data and the entry, a slot reused for another block whose entry never
// landed) is dropped and fetched again, never served. Blocks this process wrote itself are
// trusted. The checksum guards against a crash, not an adversary (whoever can write the cache
// directory can write its map too), so it is a CRC-32, as btrfs checksums its data blocks with
// CRC-32C. Here zlib's took 0.28-0.40 s per GiB of 64 KiB blocks against sha256's 0.76-0.82 s,
// and a cold read checksums every block it fetches. Version 1 of the map held a sha256: its
// caches start empty.
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
import { O_CREAT_EXCL_RDWR, O_RDWR } from '../block/syscalls.js';

const MAGIC_STEM = 'nbd-cow block cache v';
const MAGIC = `${MAGIC_STEM}2\n`;
export const MAP_HEADER_BYTES = 4096;
export const ENTRY_BYTES = 24;
const CHECKSUM_AT = 16;
const EMPTY = -1;

export interface BlockCacheOptions {
  readonly dir: string;
  /** File name stem for this image's files. */
  readonly stem: string;
  readonly identity: BaseIdentity;
  readonly blockSize: number;
  /** Bytes the cache may hold; at least one block. */
  readonly capacity: number;
  readonly warn: (message: string) => void;
}

interface MapHeader {
  readonly size: number;
  readonly fingerprint: string;
  readonly blockSize: number;
  readonly slots: number;
  /** Closed cleanly: data and map flushed, every block as its entry says. Absent: false. */
  readonly clean?: boolean;
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
    const { size, fingerprint, blockSize, slots, clean } = value;
    if (
      typeof size !== 'number' ||
      typeof fingerprint !== 'string' ||
      typeof blockSize !== 'number' ||
      typeof slots !== 'number'
    ) {
      return undefined;
    }
    return { size, fingerprint, blockSize, slots, clean: clean === true };
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

/** A map entry at `at`: the block + 1 (0: empty), its last use, its bytes' CRC-32. */
function encodeEntry(buf: Buffer, at: number, block: number, lastUse: number, checksum: number): void {
  buf.writeBigUInt64BE(BigInt(block + 1), at);
  buf.writeDoubleBE(lastUse, at + 8);
  buf.writeUInt32BE(checksum, at + CHECKSUM_AT);
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
  readonly #lock: OverlayLock;
  readonly #imageSize: number;
  /** Per slot: the block it holds, or EMPTY. */
  readonly #blockOf: Float64Array;
  readonly #lastUse: Float64Array;
  /** Per slot: the CRC-32 of the block it holds. */
  readonly #checksums: Uint32Array;
  /** Per slot: 1 once its bytes are known good in this process. */
  readonly #verified: Uint8Array;
  /** Per slot: reads of it in progress (a pinned slot is never reused). */
  readonly #pins: Uint32Array;
  /** Block → slot, least recently used first (a Map keeps insertion order). */
  readonly #slotOf = new Map<number, number>();
  readonly #free: number[] = [];
  readonly #checking = new Map<number, Promise<Buffer | undefined>>();
  readonly #warn: (message: string) => void;
  #clock = 0;
  #header: MapHeader = { size: 0, fingerprint: '', blockSize: 0, slots: 0 };
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
    this.#imageSize = options.identity.size;
    this.#warn = options.warn;
    this.#blockOf = new Float64Array(slots).fill(EMPTY);
    this.#lastUse = new Float64Array(slots);
    this.#checksums = new Uint32Array(slots);
    this.#verified = new Uint8Array(slots);
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

  /** Whether `block` is held (it may still fail its check on the first read). */
  has(block: number): boolean {
    return this.#slotOf.has(block);
  }

  /**
   * Copy `dest.length` bytes of `block`, from `inner` bytes into it, into `dest`. False when the
   * block is not held, or failed its check and was dropped: the caller fetches it.
   */
  async read(block: number, inner: number, dest: Buffer, guard?: InlineIoGuard): Promise<boolean> {
    const slot = this.#slotOf.get(block);
    if (slot === undefined) return false;
    this.#touch(block, slot);
    this.#pins[slot] = (this.#pins[slot] as number) + 1;
    try {
      if (this.#verified[slot] === 1) {
        await this.#data.read(dest, slot * this.blockSize + inner, guard);
        return true;
      }
      const whole = await this.#check(block, slot);
      if (whole === undefined) return false;
      whole.copy(dest, 0, inner, inner + dest.length);
      return true;
    } finally {
      this.#pins[slot] = (this.#pins[slot] as number) - 1;
    }
  }

  /**
   * Read `dest.length` bytes from `inner` bytes into block `first` with one file read, when
   * `count` blocks from `first` are held, already checked, and in consecutive slots (as blocks
   * fetched in order are kept); undefined, having done nothing, when they are not.
   */
  readSpan(first: number, count: number, inner: number, dest: Buffer, guard?: InlineIoGuard): Promise<void> | undefined {
    const slot = this.#slotOf.get(first);
    if (slot === undefined) return undefined;
    for (let i = 0; i < count; i++) {
      if (this.#slotOf.get(first + i) !== slot + i || this.#verified[slot + i] !== 1) return undefined;
    }
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
   * held are left as they are. Blocks that land in consecutive slots share one map write. A
   * failure to write (a full disk) is warned about once and leaves those blocks uncached: the
   * cache only ever saves fetches.
   */
  async store(first: number, data: Buffer): Promise<void> {
    const bs = this.blockSize;
    const count = Math.ceil(data.length / bs);
    const runs: Run[] = [];
    for (let i = 0; i < count && !this.#closed; i++) {
      const block = first + i;
      if (this.#slotOf.has(block)) continue;
      const slot = this.#takeSlot();
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
    const blocks = Array.from({ length: run.count }, (_, i) => bytes.subarray(i * bs, (i + 1) * bs));
    const checksums = blocks.map((block) => crc32(block));
    const entries = Buffer.alloc(run.count * ENTRY_BYTES);
    for (const [i, checksum] of checksums.entries()) encodeEntry(entries, i * ENTRY_BYTES, run.block + i, this.#clock, checksum);
    try {
      // Block by block: a block's write stays small enough to run inline (data-file.ts).
      for (const [i, block] of blocks.entries()) await this.#data.write(block, (run.slot + i) * bs);
      await this.#map.write(entries, MAP_HEADER_BYTES + run.slot * ENTRY_BYTES);
    } catch (err) {
      for (let i = 0; i < run.count; i++) this.#free.push(run.slot + i);
      if (!this.#storeFailed) {
        this.#storeFailed = true;
        this.#warn(
          `block cache: cannot keep fetched blocks in ${this.dataPath}: ${(err as Error).message}; serving without keeping them`,
        );
      }
      return;
    }
    for (let i = 0; i < run.count; i++) {
      const block = run.block + i;
      const slot = run.slot + i;
      if (this.#closed || this.#slotOf.has(block)) {
        this.#free.push(slot);
        continue;
      }
      this.#checksums[slot] = checksums[i] as number;
      this.#blockOf[slot] = block;
      this.#verified[slot] = 1;
      this.#touch(block, slot);
    }
  }

  /** Write every entry (last-use times included) and flush both files, then let the lock go. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      const table = Buffer.alloc(this.slots * ENTRY_BYTES);
      for (let slot = 0; slot < this.slots; slot++) this.#encodeEntry(table, slot * ENTRY_BYTES, slot);
      await this.#map.write(table, MAP_HEADER_BYTES);
      await this.#data.sync();
      await this.#map.sync();
      // Only once both are on disk: the next process may trust every entry.
      await this.#map.write(encodeHeader({ ...this.#header, clean: true }), 0);
      await this.#map.sync();
    } finally {
      await this.#data.close().catch(() => undefined);
      await this.#map.close().catch(() => undefined);
      await this.#lock.release();
    }
  }

  async #load(header: MapHeader): Promise<void> {
    this.#header = header;
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
      for (let slot = this.slots - 1; slot >= 0; slot--) this.#free.push(slot);
      return;
    }
    const table = Buffer.alloc(this.slots * ENTRY_BYTES);
    await this.#map.read(table, MAP_HEADER_BYTES);
    const held: Array<{ slot: number; block: number; lastUse: number }> = [];
    const imageBlocks = Math.ceil(header.size / header.blockSize);
    for (let slot = 0; slot < this.slots; slot++) {
      const at = slot * ENTRY_BYTES;
      const block = Number(table.readBigUInt64BE(at)) - 1;
      const lastUse = table.readDoubleBE(at + 8);
      if (block < 0 || block >= imageBlocks || this.#slotOf.has(block) || !Number.isFinite(lastUse)) continue;
      this.#blockOf[slot] = block;
      this.#lastUse[slot] = lastUse;
      this.#checksums[slot] = table.readUInt32BE(at + CHECKSUM_AT);
      held.push({ slot, block, lastUse });
      this.#slotOf.set(block, slot);
    }
    // Least recently used first, as the Map must be.
    this.#slotOf.clear();
    held.sort((a, b) => a.lastUse - b.lastUse);
    for (const { slot, block } of held) this.#slotOf.set(block, slot);
    this.#clock = held.at(-1)?.lastUse ?? 0;
    for (let slot = this.slots - 1; slot >= 0; slot--) if (this.#blockOf[slot] === EMPTY) this.#free.push(slot);
    if (found.clean === true) for (const { slot } of held) this.#verified[slot] = 1;
    // Dirty on disk before the first block is kept: a crash from now on is seen as one.
    await this.#map.write(encodeHeader(header), 0);
    await this.#map.sync();
  }

  /** Read the whole slot and compare it with its entry's checksum; drop it on a mismatch. */
  #check(block: number, slot: number): Promise<Buffer | undefined> {
    const running = this.#checking.get(slot);
    if (running !== undefined) return running;
    const checking = (async () => {
      const length = Math.min(this.blockSize, this.#imageSize - block * this.blockSize);
      const whole = Buffer.allocUnsafe(length);
      await this.#data.read(whole, slot * this.blockSize);
      if (crc32(whole) === this.#checksums[slot]) {
        this.#verified[slot] = 1;
        return whole;
      }
      this.#warn(
        `block cache ${this.dataPath}: block ${block} does not match its checksum (an interrupted write?); fetching it again`,
      );
      this.#drop(block, slot);
      return undefined;
    })().finally(() => this.#checking.delete(slot));
    this.#checking.set(slot, checking);
    return checking;
  }

  #drop(block: number, slot: number): void {
    if (this.#slotOf.get(block) !== slot) return;
    this.#slotOf.delete(block);
    this.#blockOf[slot] = EMPTY;
    this.#verified[slot] = 0;
    this.#writeEntry(slot, EMPTY, 0, 0)
      .then(() => this.#free.push(slot))
      .catch(() => undefined);
  }

  /** A free slot, else the least recently used one nobody is reading (its block is forgotten first). */
  #takeSlot(): number | undefined {
    const free = this.#free.pop();
    if (free !== undefined) return free;
    for (const [block, slot] of this.#slotOf) {
      if (this.#pins[slot] !== 0 || this.#checking.has(slot)) continue;
      this.#slotOf.delete(block);
      this.#blockOf[slot] = EMPTY;
      this.#verified[slot] = 0;
      return slot;
    }
    return undefined;
  }

  #touch(block: number, slot: number): void {
    this.#lastUse[slot] = ++this.#clock;
    this.#slotOf.delete(block);
    this.#slotOf.set(block, slot);
  }

  #encodeEntry(buf: Buffer, at: number, slot: number): void {
    const block = this.#blockOf[slot] as number;
    const lastUse = block === EMPTY ? 0 : (this.#lastUse[slot] as number);
    encodeEntry(buf, at, block, lastUse, this.#checksums[slot] as number);
  }

  #writeEntry(slot: number, block: number, lastUse: number, checksum: number): Promise<void> {
    const entry = Buffer.alloc(ENTRY_BYTES);
    encodeEntry(entry, 0, block, lastUse, checksum);
    return this.#map.write(entry, MAP_HEADER_BYTES + slot * ENTRY_BYTES);
  }
}

async function openOrCreate(path: string): Promise<DataFile> {
  try {
    return await DataFile.open(path, O_RDWR);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
    return DataFile.open(path, O_CREAT_EXCL_RDWR, 0o600);
  }
}
