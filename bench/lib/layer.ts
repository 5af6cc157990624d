// The layer for the `{layer}` token in OURS_VARIANTS (OURS_VARIANTS="--layer {layer}"): a frozen
// overlay on the bench's base that holds every LAYER_STRIDE-th 64 KiB of the image as its own
// data (a byte pattern), the rest still in the base. A read through it crosses a run of the
// layer's map every 64 KiB at most, so the variant measures what the fall-through costs reads.

import { openBase } from '../../lib/block/base-image.js';
import { BLOCK_DATA } from '../../lib/block/bitmap.js';
import { OverlayFile } from '../../lib/block/overlay-file.js';
import { createOverlay, freezeOverlay } from '../../lib/block/overlay-lifecycle.js';

export const LAYER_TOKEN = '{layer}';
const CHUNK = 64 * 1024;
const LAYER_STRIDE = 8;
const BLOCK_SIZE = 4096;

/** Build the frozen layer at `path` on `base`; returns the share of the image it holds. */
export async function buildLayer(base: string, path: string): Promise<number> {
  await createOverlay(path, { base, blockSize: BLOCK_SIZE });
  const image = await openBase(base);
  const overlay = await OverlayFile.open(path, image.identity);
  const data = Buffer.alloc(CHUNK, 0x5a);
  let chunks = 0;
  for (let offset = 0; offset + CHUNK <= image.size; offset += CHUNK * LAYER_STRIDE) {
    await overlay.writeData(offset, data);
    overlay.map.setRange(offset / BLOCK_SIZE, CHUNK / BLOCK_SIZE, BLOCK_DATA);
    chunks++;
  }
  await overlay.markClean();
  await overlay.close();
  await image.close();
  await freezeOverlay(path);
  return (chunks * CHUNK) / image.size;
}
