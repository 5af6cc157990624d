// The read-only base image: opened O_RDONLY, never written, shared by every connection. It is
// also a BlockDevice on its own (writable = false), which is what `--read-only` serves.
//
// Identity: an overlay records the base's size and a fingerprint, a hex sha256 over the size
// and sampled content (the first, the last and 16 evenly spaced 64 KiB windows; the whole file
// when it is no larger than those 18 windows). It reads at most 1.125 MiB whatever the size, so
// it is cheap on a 10 GiB image, and it is deterministic. It catches a different or rebuilt
// image, not a change confined to unsampled bytes. doc/overlay-format.md gives the exact input.

import { createHash } from 'node:crypto';
import { codedError } from './coded-error.js';
import { DataFile } from './data-file.js';
import type { BlockDevice, Extent } from './device.js';
import type { InlineIoGuard } from './inline-io-guard.js';
import { O_RDONLY } from './syscalls.js';

export interface BaseIdentity {
  readonly size: number;
  /** 64 lowercase hex digits. */
  readonly fingerprint: string;
}

export interface BaseImage extends BlockDevice {
  readonly path: string;
  readonly identity: BaseIdentity;
  /**
   * read(), with `guard` deciding inline or threadpool for the file reads it makes (DataFile.read):
   * each connection reads the shared base with a guard of its own, so a client whose reads miss
   * the page cache sends its own reads to the threadpool, not its neighbours' cache hits.
   */
  read(offset: number, dest: Buffer, guard?: InlineIoGuard): Promise<void>;
}

export const FINGERPRINT_WINDOW = 64 * 1024;
export const FINGERPRINT_INNER_WINDOWS = 16;
const FINGERPRINT_TAG = 'nbd-cow base fingerprint v1\n';
/** Chunk size for cache(): bounded memory whatever the request length. */
const CACHE_CHUNK = 1024 * 1024;

/** Start offsets of the fingerprint windows for a file of `size` bytes. */
export function fingerprintWindows(size: number): number[] {
  const windows = FINGERPRINT_INNER_WINDOWS + 2;
  if (size <= windows * FINGERPRINT_WINDOW) return size === 0 ? [] : [0];
  const last = size - FINGERPRINT_WINDOW;
  const starts = [0];
  for (let i = 1; i <= FINGERPRINT_INNER_WINDOWS; i++) {
    starts.push(Math.floor((last * i) / (FINGERPRINT_INNER_WINDOWS + 1)));
  }
  starts.push(last);
  return starts;
}

/** sha256 over the tag, the size and each sampled window (its offset, then its bytes). */
export async function fingerprintFile(file: DataFile, size: number): Promise<string> {
  const hash = createHash('sha256');
  const u64 = Buffer.alloc(8);
  hash.update(FINGERPRINT_TAG, 'latin1');
  u64.writeBigUInt64BE(BigInt(size));
  hash.update(u64);
  const whole = size <= (FINGERPRINT_INNER_WINDOWS + 2) * FINGERPRINT_WINDOW;
  const buf = Buffer.allocUnsafe(whole ? size : FINGERPRINT_WINDOW);
  for (const start of fingerprintWindows(size)) {
    await file.read(buf, start);
    u64.writeBigUInt64BE(BigInt(start));
    hash.update(u64);
    hash.update(buf);
  }
  return hash.digest('hex');
}

function describe(err: unknown): { code: string; cause: string } {
  const e = err as NodeJS.ErrnoException;
  const code = typeof e.code === 'string' ? e.code : 'EIO';
  const causes: Record<string, string> = {
    ENOENT: 'no such file',
    EACCES: 'permission denied',
    EISDIR: 'is a directory',
    ENOTDIR: 'a parent is not a directory',
    ELOOP: 'too many symbolic links',
  };
  // System errors read "ENOENT: no such file or directory, open '/x'": keep the middle part.
  const plain = (e.message || code).replace(/^[A-Z0-9_]+: /, '').replace(/, \w+ '.*'$/, '');
  return { code, cause: causes[code] ?? plain };
}

/** Open the base image read-only; errors are one line naming the path and the cause. */
export async function openBase(path: string): Promise<BaseImage> {
  let file: DataFile | undefined;
  try {
    file = await DataFile.open(path, O_RDONLY);
    const stats = await file.stat();
    if (stats.isDirectory()) throw codedError('EISDIR', 'is a directory');
    if (!stats.isFile() && !stats.isBlockDevice()) throw codedError('EINVAL', 'not a regular file');
    // A block device reports size 0 in stat; serving one is for a later issue.
    if (stats.isBlockDevice()) throw codedError('EINVAL', 'block devices are not supported yet');
    const fingerprint = await fingerprintFile(file, stats.size);
    return new BaseFile(path, file, { size: stats.size, fingerprint });
  } catch (err) {
    if (file !== undefined) await file.close().catch(() => undefined);
    const { code, cause } = describe(err);
    throw codedError(code, `cannot open base image ${path}: ${cause} (${code})`);
  }
}

/**
 * What every read-only image shares (the base file, a stack of frozen layers on it): write-type
 * calls refused with EPERM, flush a no-op, cache() reading the range in bounded chunks.
 */
export abstract class ReadOnlyImage implements BaseImage {
  readonly writable = false;
  abstract readonly path: string;
  abstract readonly identity: BaseIdentity;
  abstract read(offset: number, dest: Buffer, guard?: InlineIoGuard): Promise<void>;
  abstract extents(offset: number, length: number, maxExtents: number): Promise<Extent[]>;
  abstract close(): Promise<void>;

  get size(): number {
    return this.identity.size;
  }

  write(): Promise<void> {
    return this.#readOnly();
  }

  zero(): Promise<void> {
    return this.#readOnly();
  }

  trim(): Promise<void> {
    return this.#readOnly();
  }

  async flush(): Promise<void> {}

  async cache(offset: number, length: number): Promise<void> {
    const end = Math.min(offset + length, this.size);
    const buf = Buffer.allocUnsafe(Math.min(CACHE_CHUNK, Math.max(0, end - offset)));
    for (let pos = offset; pos < end; pos += buf.length) {
      await this.read(pos, buf.subarray(0, Math.min(buf.length, end - pos)));
    }
  }

  async #readOnly(): Promise<void> {
    throw codedError('EPERM', `${this.path} is read-only`);
  }
}

class BaseFile extends ReadOnlyImage {
  readonly path: string;
  readonly identity: BaseIdentity;
  readonly #file: DataFile;
  #closed = false;

  constructor(path: string, file: DataFile, identity: BaseIdentity) {
    super();
    this.path = path;
    this.#file = file;
    this.identity = identity;
  }

  read(offset: number, dest: Buffer, guard?: InlineIoGuard): Promise<void> {
    if (this.#closed) return Promise.reject(codedError('ESHUTDOWN', `base image ${this.path} is closed`));
    return this.#file.read(dest, offset, guard);
  }

  /** All of it comes from this file: depth 1 (holes in it are not looked for). */
  async extents(offset: number, length: number): Promise<Extent[]> {
    return [{ length: Math.max(0, Math.min(length, this.size - offset)), state: 'base', depth: 1 }];
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    await this.#file.close();
  }
}
