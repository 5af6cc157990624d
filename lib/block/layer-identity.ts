// What an overlay made on a frozen layer records as its base (layer-stack.ts): the layer's
// virtual size, and sha256 over a tag, the layer's id (16 random bytes written by freeze) and the
// size and fingerprint of what the layer itself was made on. A chain of layers is thus named
// from the top: each identity covers everything below it. doc/overlay-format.md gives the input.

import { createHash } from 'node:crypto';
import type { BaseIdentity } from './base-image.js';
import type { OverlayHeader } from './overlay-header.js';

const LAYER_TAG = 'nbd-cow layer v1\n';

/** The identity of the frozen overlay `header` as a base for others; a RangeError when not frozen. */
export function layerIdentity(header: OverlayHeader): BaseIdentity {
  if (header.frozen !== true || header.layerId === undefined) throw new RangeError('not a frozen overlay');
  const hash = createHash('sha256');
  const u64 = Buffer.alloc(8);
  hash.update(LAYER_TAG, 'latin1');
  hash.update(Buffer.from(header.layerId, 'hex'));
  u64.writeBigUInt64BE(BigInt(header.baseSize));
  hash.update(u64);
  hash.update(Buffer.from(header.baseFingerprint, 'hex'));
  return { size: header.virtualSize, fingerprint: hash.digest('hex') };
}
