// Shared fixtures for the block tests: a seeded PRNG and deterministic base images.

import { createHash } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** mulberry32: a small deterministic PRNG; returns floats in [0, 1). */
export function seededRandom(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** An integer in [0, n). */
export function randomInt(rand: () => number, n: number): number {
  return Math.floor(rand() * n);
}

/** `size` pattern bytes: never all zero, different per seed. */
export function patternBytes(size: number, seed = 1): Buffer {
  const rand = seededRandom(seed);
  const buf = Buffer.alloc(size);
  for (let i = 0; i < size; i++) buf[i] = 1 + randomInt(rand, 255);
  return buf;
}

/** Write a base image of `size` pattern bytes into `dir`; returns its path and contents. */
export function makeBase(dir: string, size: number, seed = 1, name = 'base.img'): { path: string; bytes: Buffer } {
  const path = join(dir, name);
  const bytes = patternBytes(size, seed);
  writeFileSync(path, bytes);
  return { path, bytes };
}

export function sha256File(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}
