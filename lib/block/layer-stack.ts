// Layered golden images: a base file with frozen overlays ("layers") stacked on it, read as one
// read-only image. `serve BASE --layer L1 --layer L2` puts L1 on BASE and L2 on L1; the clients'
// overlays (per connection or named) then sit on L2. A read falls through: each layer's map sends
// a run to its own data ("data"), to zeros ("zero") or to the level below ("base"), down to the
// base file. Layers are opened O_RDONLY and never written: freeze (overlay-lifecycle.ts) made
// them read-only for good.
//
// Identity. An overlay records what it was made on (overlay-header.ts: size and fingerprint).
// For the base file that is the sampled-content fingerprint (base-image.ts); for a layer it is
// derived from the layer's id (16 random bytes freeze wrote) and what the layer itself was made
// on (layer-identity.ts). So an overlay made on L2 names L2, L2 names L1, L1 names the
// base: a layer made for another base or another layer is refused when the stack is opened, and
// an overlay made on another stack when it is opened, each in one line.

import { type BaseIdentity, type BaseImage, openBase, ReadOnlyImage } from './base-image.js';
import { type Bitmap, BLOCK_BASE, BLOCK_DATA, BLOCK_ZERO } from './bitmap.js';
import { codedError } from './coded-error.js';
import type { DataFile } from './data-file.js';
import { type Extent, type ExtentState, extentDepth } from './device.js';
import type { InlineIoGuard } from './inline-io-guard.js';
import { layerIdentity } from './layer-identity.js';
import type { OverlayHeader } from './overlay-header.js';
import { forEachRun, openOverlayReadOnly } from './overlay-inspect.js';
import type { OverlayGeometry } from './overlay-layout.js';
import { blockOf } from './ranges.js';

const STATE_NAMES: Readonly<Record<number, ExtentState>> = { [BLOCK_DATA]: 'data', [BLOCK_ZERO]: 'zero' };

function short(identity: BaseIdentity): string {
  return `size ${identity.size}, fingerprint ${identity.fingerprint.substring(0, 16)}…`;
}

/** One frozen layer on `below`: its map and data, read-only. */
class Layer extends ReadOnlyImage {
  readonly path: string;
  readonly identity: BaseIdentity;
  readonly #below: BaseImage;
  readonly #file: DataFile;
  readonly #geometry: OverlayGeometry;
  readonly #map: Bitmap;
  #closed = false;

  constructor(path: string, below: BaseImage, file: DataFile, header: OverlayHeader, geometry: OverlayGeometry, map: Bitmap) {
    super();
    this.path = path;
    this.identity = layerIdentity(header);
    this.#below = below;
    this.#file = file;
    this.#geometry = geometry;
    this.#map = map;
  }

  read(offset: number, dest: Buffer, guard?: InlineIoGuard): Promise<void> {
    if (this.#closed) return Promise.reject(codedError('ESHUTDOWN', `layer ${this.path} is closed`));
    const reads: Promise<void>[] = [];
    this.#forEachRun(offset, offset + dest.length, (state, start, end) => {
      const piece = dest.subarray(start - offset, end - offset);
      if (state === BLOCK_BASE) reads.push(this.#below.read(start, piece, guard));
      else if (state === BLOCK_DATA) reads.push(this.#file.read(piece, this.#geometry.dataOffset + start, guard));
      else piece.fill(0);
    });
    return reads.length === 1 ? (reads[0] as Promise<void>) : Promise.all(reads).then(() => undefined);
  }

  /** This layer's runs at depth 1; runs it leaves to the level below, as that level says, one deeper. */
  async extents(offset: number, length: number, maxExtents: number): Promise<Extent[]> {
    if (this.#closed) throw codedError('ESHUTDOWN', `layer ${this.path} is closed`);
    const end = Math.min(offset + length, this.size);
    const max = Math.max(1, maxExtents);
    const runs: Array<[number, number, number]> = [];
    this.#forEachRun(offset, end, (state, start, runEnd) => void runs.push([state, start, runEnd]));
    const out: Extent[] = [];
    for (const [state, start, runEnd] of runs) {
      if (out.length >= max) break;
      const own = STATE_NAMES[state];
      if (own !== undefined) {
        out.push({ length: runEnd - start, state: own, depth: 1 });
        continue;
      }
      let covered = start;
      for (const below of await this.#below.extents(start, runEnd - start, max - out.length)) {
        out.push({ ...below, depth: extentDepth(below) + 1 });
        covered += below.length;
      }
      if (covered < runEnd) break;
    }
    return out;
  }

  /** Close this layer and everything below it. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    try {
      await this.#file.close();
    } finally {
      await this.#below.close();
    }
  }

  /** Call `fn(state, start, end)` for each run of equal state over bytes [offset, end). */
  #forEachRun(offset: number, end: number, fn: (state: number, start: number, end: number) => void): void {
    if (end <= offset) return;
    const bs = this.#geometry.blockSize;
    forEachRun(this.#map, blockOf(offset, bs), blockOf(end - 1, bs) + 1, (state, block, count) => {
      fn(state, Math.max(offset, block * bs), Math.min((block + count) * bs, end));
    });
  }
}

/**
 * Put the frozen layer at `path` on `below`. Refuses (EINVAL, one line) a file that is not a
 * frozen overlay, or one made for something other than `below`; `below` stays open either way.
 */
export async function openLayer(path: string, below: BaseImage): Promise<BaseImage> {
  const { inspected, file } = await openOverlayReadOnly(path);
  try {
    const { header, geometry, map } = inspected;
    if (header.frozen !== true) {
      throw codedError('EINVAL', `layer ${path} is not frozen: freeze it first (nbd-cow overlay freeze ${path})`);
    }
    const made = { size: header.baseSize, fingerprint: header.baseFingerprint };
    if (geometry.size !== made.size) {
      throw codedError(
        'EINVAL',
        `layer ${path}: virtual size ${geometry.size} differs from the size it was made on (${made.size})`,
      );
    }
    if (made.size !== below.size || made.fingerprint !== below.identity.fingerprint) {
      throw codedError(
        'EINVAL',
        `layer ${path} was made for another base or layer: made for (${short(made)}), ` +
          `below it is ${below.path} (${short(below.identity)})`,
      );
    }
    return new Layer(path, below, file, header, geometry, map);
  } catch (err) {
    await file.close().catch(() => undefined);
    throw err;
  }
}

/**
 * The base file at `basePath` with `layerPaths` on it, bottom first, as one read-only image
 * (just the base file when there are none). `openBottom` opens the base (a remote one:
 * lib/remote/open-base-image.ts). Closing it closes every level. On a refusal
 * whatever was opened is closed again.
 */
export async function openImageStack(
  basePath: string,
  layerPaths: readonly string[] = [],
  openBottom: (path: string) => Promise<BaseImage> = openBase,
): Promise<BaseImage> {
  let image = await openBottom(basePath);
  try {
    for (const path of layerPaths) image = await openLayer(path, image);
  } catch (err) {
    await image.close().catch(() => undefined);
    throw err;
  }
  return image;
}
