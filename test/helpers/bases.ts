// Base images for tests: deterministic patterns, random and striped files, and a guard that
// checks at the end of a test that the base was never written.

import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { join } from 'node:path';
import type { Test } from 'tap';
import { writePatternImage } from '../../lib/demo-image.js';

/** A deterministic pattern file of `size` bytes (byte i = (i * 7 + 1) & 0xff, never all zero). */
export function patternBuffer(size: number): Buffer {
  const buf = Buffer.alloc(size);
  for (let i = 0; i < size; i++) buf[i] = (i * 7 + 1) & 0xff;
  return buf;
}

export function writeBaseFile(dir: string, size: number, name = 'base.img'): { path: string; bytes: Buffer } {
  const path = join(dir, name);
  const bytes = patternBuffer(size);
  writeFileSync(path, bytes);
  return { path, bytes };
}

/** Write a pattern base image (lib/demo-image.ts) of `size` bytes; returns its path. */
export async function makePatternBase(dir: string, size: number, name = 'base.img'): Promise<string> {
  const path = join(dir, name);
  await writePatternImage(path, size);
  return path;
}

/** Write `size` random bytes (a fresh random image each time); returns its path. */
export async function makeRandomBase(dir: string, size: number, name = 'base.img'): Promise<string> {
  const path = join(dir, name);
  const handle = await open(path, 'w', 0o644);
  try {
    for (let pos = 0; pos < size; pos += 1 << 20) {
      const chunk = randomBytes(Math.min(1 << 20, size - pos));
      await handle.write(chunk, 0, chunk.length, pos);
    }
  } finally {
    await handle.close();
  }
  return path;
}

/** The byte of a striped base at `offset`: 0x40 + the MiB it is in (qemu-io can check it with -P). */
export function stripeByte(offset: number): number {
  return 0x40 + Math.floor(offset / (1 << 20));
}

/** Write a striped base: every MiB filled with one byte, stripeByte(offset). */
export async function makeStripedBase(dir: string, size: number, name = 'base.img'): Promise<string> {
  const path = join(dir, name);
  const handle = await open(path, 'w', 0o644);
  try {
    for (let pos = 0; pos < size; pos += 1 << 20) {
      const chunk = Buffer.alloc(Math.min(1 << 20, size - pos), stripeByte(pos));
      await handle.write(chunk, 0, chunk.length, pos);
    }
  } finally {
    await handle.close();
  }
  return path;
}

export function sha256File(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    createReadStream(path)
      .on('data', (chunk) => hash.update(chunk))
      .on('error', reject)
      .on('end', () => resolve(hash.digest('hex')));
  });
}

export function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

export interface BaseGuard {
  /** The base's sha256 when the guard was made. */
  readonly sha256: string;
  /** Assert that the base still has that sha256 (call at the end, after stopping servers). */
  check(): Promise<void>;
}

/** Record the base's sha256 now, to check at the end of a test that writes that it never changed. */
export async function guardBase(t: Test, path: string): Promise<BaseGuard> {
  const before = await sha256File(path);
  return {
    sha256: before,
    check: async () => {
      t.equal(await sha256File(path), before, 'the base image is unchanged (sha256)');
    },
  };
}
