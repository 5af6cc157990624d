// Deterministic base images: the demo image `nbd-cow serve` makes when no base is given, and
// the pattern the tests check against. Every 4 KiB sector starts with a readable label and is
// filled with bytes derived from its offset, so any misplaced block is visible; a band of zero
// sectors in the middle checks that zeros in the base are served as data like any other bytes.

import { open } from 'node:fs/promises';

const SECTOR = 4096;

/** The pattern byte at absolute offset `offset` of a pattern image. */
export function patternByte(offset: number): number {
  const sector = Math.floor(offset / SECTOR);
  return (offset * 31 + sector * 7 + 0x5a) & 0xff;
}

/** Fill `dest` with the pattern bytes of [offset, offset + dest.length). */
export function fillPattern(dest: Buffer, offset: number): void {
  for (let i = 0; i < dest.length; i++) dest[i] = patternByte(offset + i);
}

/**
 * Write a pattern image of `size` bytes to `path` (replacing it). Sectors in the middle
 * eighth of the image are zero.
 */
export async function writePatternImage(path: string, size: number): Promise<void> {
  const handle = await open(path, 'w', 0o644);
  try {
    const chunk = Buffer.allocUnsafe(1024 * 1024);
    const zeroStart = Math.floor((size * 7) / 16 / SECTOR) * SECTOR;
    const zeroEnd = Math.floor((size * 9) / 16 / SECTOR) * SECTOR;
    for (let offset = 0; offset < size; offset += chunk.length) {
      const part = chunk.subarray(0, Math.min(chunk.length, size - offset));
      fillPattern(part, offset);
      for (let at = 0; at < part.length; at += SECTOR) {
        const abs = offset + at;
        if (abs >= zeroStart && abs < zeroEnd) part.fill(0, at, Math.min(at + SECTOR, part.length));
        else part.write(`nbd-cow demo sector ${abs / SECTOR}\n`, at, Math.min(64, part.length - at), 'latin1');
      }
      await handle.write(part, 0, part.length, offset);
    }
  } finally {
    await handle.close();
  }
}
