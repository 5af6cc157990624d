// `nbd-cow overlay stats DIR`: across the overlays of one base, how many data blocks hold the
// same bytes, and what a shared content-addressed block store would save (the disk counterpart
// of mergemem's estimate). Every `*.cow` regular file in DIR (not recursive) is opened as
// `overlay info` opens it (overlay-inspect.ts: O_RDONLY, no lock taken, the last flushed map), so
// servers using them go on undisturbed; a file that is not a valid overlay is skipped with a
// reason, not fatal. Overlays are grouped by base (size and fingerprint) and block size, and
// blocks are compared only within a group.
//
// Each data block is sorted into one of three kinds (overlay-stats-report.ts prints the same
// definitions in --help):
//
//   kind          test                                        a shared store keeps
//   all zeros     every byte 0                                nothing (the zero state)
//   same as base  (--base) equal to the base at its offset    nothing (the base state)
//   other         -                                           each distinct content once
//
//   saved = data bytes - stored bytes
//         = all-zero bytes + same-as-base bytes + the extra copies of repeated contents.
//
// A content is the block's bytes in the image (the partial last block is shorter), so two
// blocks match only when both length and bytes do. Runs of data blocks come from the map as
// forEachRun walks it, but lazily (dataRuns), so no list of runs is kept; each run is read
// through one 1 MiB buffer (and one for the base), 1 MiB a pread. Memory is those buffers, the
// map of the overlay being read, and per group a ContentSet of 21-32 bytes per distinct content.

import { createHash } from 'node:crypto';
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { type BaseIdentity, type BaseImage, openBase } from './base-image.js';
import { type Bitmap, BLOCK_DATA } from './bitmap.js';
import { codedError } from './coded-error.js';
import type { DataFile } from './data-file.js';
import { type InspectedOverlay, openOverlayReadOnly } from './overlay-inspect.js';
import { listDirectory } from './syscalls.js';

/** Bytes read at a time (a multiple of every block size: they are powers of two up to 1 MiB). */
export const READ_CHUNK = 1024 * 1024;

export interface ByteCount {
  readonly blocks: number;
  readonly bytes: number;
}

/** One group: the overlays of one base and block size, and what their data blocks hold. */
export interface StatsGroup {
  readonly base: BaseIdentity;
  readonly blockSize: number;
  /** The overlays' paths, in name order. */
  readonly overlays: readonly string[];
  /** Bytes the overlay files take on disk (st_blocks × 512), added up. */
  readonly allocatedBytes: number;
  /** Blocks in the data state, and their bytes. */
  readonly data: ByteCount;
  /** Data blocks whose bytes are all zero. */
  readonly zero: ByteCount;
  /** Non-zero data blocks equal to the base's bytes at their offset; undefined without --base. */
  readonly sameAsBase: ByteCount | undefined;
  /** Distinct contents among the non-zero data blocks. */
  readonly distinct: number;
  /** Non-zero data blocks whose content is also in another data block (all copies, the first too). */
  readonly duplicates: ByteCount;
  /** What a shared store keeps: each distinct content once, but for all-zero and same-as-base blocks. */
  readonly stored: { readonly contents: number; readonly bytes: number };
  /** data.bytes - stored.bytes. */
  readonly savedBytes: number;
}

export interface SkippedFile {
  readonly path: string;
  /** One line naming the file and why it is not an overlay that could be read. */
  readonly reason: string;
}

export interface OverlayStats {
  readonly directory: string;
  /** The --base image, when given. */
  readonly base: { readonly path: string; readonly identity: BaseIdentity } | undefined;
  /** Overlays read (in some group). */
  readonly scanned: number;
  readonly skipped: readonly SkippedFile[];
  /** With --base: overlays made for another base, left out. */
  readonly otherBase: readonly string[];
  /** In the order of their first overlay's name. */
  readonly groups: readonly StatsGroup[];
}

export interface StatsOptions {
  /** Only overlays of this base image; also count data blocks equal to it. */
  readonly base?: string;
  /** Opens the base (default: the local file; lib/remote/open-base-image.ts opens a URL too). */
  readonly openBase?: (path: string) => Promise<BaseImage>;
}

// ContentSet slot flags, in the low bits of a slot's fourth word.
const OCCUPIED = 1;
const REPEATED = 2;
const STORED = 4;
const FLAG_BITS = OCCUPIED | REPEATED | STORED;
const WORDS = 4;

/** What ContentSet.add() changed: bits of NEW, NOW_REPEATED, NOW_STORED. */
export const NEW = 1;
export const NOW_REPEATED = 2;
export const NOW_STORED = 4;

/**
 * A set of content hashes: the first 128 bits of a sha256, in one Uint32Array of four words a
 * slot (16 bytes), open addressing with linear probing from word 0 modulo the capacity. The low
 * three bits of word 3 are flags (occupied, seen more than once, needs storing), so 125 bits of
 * the hash are compared. Two different contents collide with probability about n² / 2^126 for
 * n distinct contents: 2^-62 at n = 2^32 (16 TiB of distinct 4 KiB blocks), far below the
 * chance of a disk error, which is why no bytes are compared. The table grows 1.5× past 3/4
 * full, so it is 1/2 to 3/4 full: 21-32 bytes per distinct content.
 */
export class ContentSet {
  #slots: Uint32Array;
  #capacity: number;
  #size = 0;

  constructor(capacity = 1024) {
    this.#capacity = Math.max(4, capacity);
    this.#slots = new Uint32Array(this.#capacity * WORDS);
  }

  /** Distinct hashes held. */
  get size(): number {
    return this.#size;
  }

  get capacity(): number {
    return this.#capacity;
  }

  /**
   * Record one occurrence of `hash` (at least 16 bytes; the first 16 are used) that needs
   * storing when `stored`. Returns the NEW, NOW_REPEATED and NOW_STORED bits for what changed.
   */
  add(hash: Buffer, stored: boolean): number {
    const w0 = hash.readUInt32LE(0);
    const w1 = hash.readUInt32LE(4);
    const w2 = hash.readUInt32LE(8);
    const w3 = (hash.readUInt32LE(12) & ~FLAG_BITS) >>> 0;
    const storeBit = stored ? STORED : 0;
    const slots = this.#slots;
    for (let i = w0 % this.#capacity; ; i = i + 1 === this.#capacity ? 0 : i + 1) {
      const at = i * WORDS;
      const last = slots[at + 3] as number;
      if ((last & OCCUPIED) === 0) {
        slots[at] = w0;
        slots[at + 1] = w1;
        slots[at + 2] = w2;
        slots[at + 3] = w3 | OCCUPIED | storeBit;
        this.#size++;
        if (this.#size * 4 > this.#capacity * 3) this.#grow();
        return NEW | (stored ? NOW_STORED : 0);
      }
      if (slots[at] === w0 && slots[at + 1] === w1 && slots[at + 2] === w2 && (last & ~FLAG_BITS) >>> 0 === w3) {
        const changed = (last & REPEATED ? 0 : NOW_REPEATED) | (stored && (last & STORED) === 0 ? NOW_STORED : 0);
        slots[at + 3] = last | REPEATED | storeBit;
        return changed;
      }
    }
  }

  #grow(): void {
    const old = this.#slots;
    const oldCapacity = this.#capacity;
    this.#capacity = Math.floor((oldCapacity * 3) / 2);
    this.#slots = new Uint32Array(this.#capacity * WORDS);
    for (let j = 0; j < oldCapacity; j++) {
      const from = j * WORDS;
      if (((old[from + 3] as number) & OCCUPIED) === 0) continue;
      let i = (old[from] as number) % this.#capacity;
      while (((this.#slots[i * WORDS + 3] as number) & OCCUPIED) !== 0) i = i + 1 === this.#capacity ? 0 : i + 1;
      this.#slots.set(old.subarray(from, from + WORDS), i * WORDS);
    }
  }
}

interface Count {
  blocks: number;
  bytes: number;
}

const count = (): Count => ({ blocks: 0, bytes: 0 });

/** The counters of one group while its overlays are read. */
export class GroupCounter {
  readonly base: BaseIdentity;
  readonly blockSize: number;
  readonly overlays: string[] = [];
  allocatedBytes = 0;
  readonly #withBase: boolean;
  readonly #contents = new ContentSet();
  readonly #zeros: Buffer;
  readonly #data = count();
  readonly #zero = count();
  readonly #sameAsBase = count();
  /** Non-zero blocks, and those whose content was seen once so far. */
  readonly #nonZero = count();
  readonly #single = count();
  readonly #stored = count();

  constructor(base: BaseIdentity, blockSize: number, withBase: boolean) {
    this.base = base;
    this.blockSize = blockSize;
    this.#withBase = withBase;
    this.#zeros = Buffer.alloc(blockSize);
  }

  /** Count one data block's bytes; `baseBlock` is the base's bytes at its offset (with --base). */
  add(block: Buffer, baseBlock?: Buffer): void {
    const n = block.length;
    bump(this.#data, n);
    if (block.equals(this.#zeros.subarray(0, n))) {
      bump(this.#zero, n);
      return;
    }
    bump(this.#nonZero, n);
    const sameAsBase = baseBlock?.equals(block) === true;
    if (sameAsBase) bump(this.#sameAsBase, n);
    const changed = this.#contents.add(createHash('sha256').update(block).digest(), !sameAsBase);
    if (changed & NEW) bump(this.#single, n);
    if (changed & NOW_REPEATED) bump(this.#single, -n, -1);
    if (changed & NOW_STORED) bump(this.#stored, n);
  }

  result(): StatsGroup {
    return {
      base: this.base,
      blockSize: this.blockSize,
      overlays: this.overlays,
      allocatedBytes: this.allocatedBytes,
      data: { ...this.#data },
      zero: { ...this.#zero },
      sameAsBase: this.#withBase ? { ...this.#sameAsBase } : undefined,
      distinct: this.#contents.size,
      duplicates: { blocks: this.#nonZero.blocks - this.#single.blocks, bytes: this.#nonZero.bytes - this.#single.bytes },
      stored: { contents: this.#stored.blocks, bytes: this.#stored.bytes },
      savedBytes: this.#data.bytes - this.#stored.bytes,
    };
  }
}

function bump(c: Count, bytes: number, blocks = 1): void {
  c.blocks += blocks;
  c.bytes += bytes;
}

/** [first block, count] of each run of data blocks, in order, found as they are asked for. */
export function* dataRuns(map: Bitmap, blocks: number): Generator<[number, number]> {
  for (let b = 0; b < blocks; ) {
    const n = map.runOf(b, blocks - b);
    if (map.get(b) === BLOCK_DATA) yield [b, n];
    b += n;
  }
}

/** The buffers one scan reads into: READ_CHUNK bytes of overlay data, and of base with --base. */
interface Buffers {
  readonly data: Buffer;
  readonly base: Buffer | undefined;
}

/** Read every data block of `inspected` from `file` (and the base's bytes there) into `group`. */
async function countOverlay(
  inspected: InspectedOverlay,
  file: DataFile,
  group: GroupCounter,
  base: BaseImage | undefined,
  buffers: Buffers,
): Promise<void> {
  const { blockSize, size, blocks, dataOffset } = inspected.geometry;
  const perChunk = READ_CHUNK / blockSize;
  for (const [first, n] of dataRuns(inspected.map, blocks)) {
    for (let b = first; b < first + n; b += perChunk) {
      const start = b * blockSize;
      const length = Math.min(Math.min(b + perChunk, first + n) * blockSize, size) - start;
      const data = buffers.data.subarray(0, length);
      await file.read(data, dataOffset + start);
      const baseData = buffers.base?.subarray(0, length);
      if (base !== undefined && baseData !== undefined) await base.read(start, baseData);
      for (let at = 0; at < length; at += blockSize) {
        const end = Math.min(at + blockSize, length);
        group.add(data.subarray(at, end), baseData?.subarray(at, end));
      }
    }
  }
}

function groupKey(base: BaseIdentity, blockSize: number): string {
  return `${base.size}/${base.fingerprint}/${blockSize}`;
}

/** The `*.cow` names in `dir`, sorted; an unreadable directory is one error naming it. */
async function overlayNames(dir: string): Promise<string[]> {
  try {
    return (await listDirectory(dir)).filter((name) => name.endsWith('.cow')).sort();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? 'EIO';
    const causes: Record<string, string> = { ENOENT: 'no such directory', ENOTDIR: 'not a directory' };
    throw codedError(code, `cannot read overlay directory ${dir}: ${causes[code] ?? code}`);
  }
}

/** Whether `path` is a regular file (following a symbolic link); false when it is gone. */
async function isRegularFile(path: string): Promise<boolean> {
  try {
    return (await stat(path)).isFile();
  } catch {
    return false;
  }
}

/** Scan the overlays in `dir` (see the top of this file); nothing is written, no lock is taken. */
export async function overlayStats(dir: string, options: StatsOptions = {}): Promise<OverlayStats> {
  const names = await overlayNames(dir);
  const base = options.base === undefined ? undefined : await (options.openBase ?? openBase)(options.base);
  const buffers: Buffers = { data: Buffer.allocUnsafe(READ_CHUNK), base: base && Buffer.allocUnsafe(READ_CHUNK) };
  const groups = new Map<string, GroupCounter>();
  const skipped: SkippedFile[] = [];
  const otherBase: string[] = [];
  let scanned = 0;
  try {
    for (const name of names) {
      const path = join(dir, name);
      // A FIFO or a directory named *.cow is not a candidate (opening a FIFO would block).
      if (!(await isRegularFile(path))) continue;
      let opened: Awaited<ReturnType<typeof openOverlayReadOnly>>;
      try {
        opened = await openOverlayReadOnly(path);
      } catch (err) {
        skipped.push({ path, reason: (err as Error).message });
        continue;
      }
      const { inspected, file } = opened;
      try {
        const h = inspected.header;
        const identity: BaseIdentity = { size: h.baseSize, fingerprint: h.baseFingerprint };
        if (base !== undefined && (identity.size !== base.identity.size || identity.fingerprint !== base.identity.fingerprint)) {
          otherBase.push(path);
          continue;
        }
        const key = groupKey(identity, h.blockSize);
        let group = groups.get(key);
        if (group === undefined) {
          group = new GroupCounter(identity, h.blockSize, base !== undefined);
          groups.set(key, group);
        }
        await countOverlay(inspected, file, group, base, buffers);
        group.overlays.push(path);
        group.allocatedBytes += inspected.allocatedBytes;
        scanned++;
      } finally {
        await file.close();
      }
    }
  } finally {
    await base?.close();
  }
  return {
    directory: dir,
    base: base === undefined ? undefined : { path: base.path, identity: base.identity },
    scanned,
    skipped,
    otherBase,
    groups: [...groups.values()].map((g) => g.result()),
  };
}
