// A frozen layer's identity as a base for others (doc/overlay-format.md, "Layer identity"): its
// virtual size, and sha256 over a tag, its layer id and the size and fingerprint of what it was
// made on. Deterministic; any of those inputs changes it; only a frozen header has one.

import t from 'tap';
import { layerIdentity } from '../../lib/block/layer-identity.js';
import type { OverlayHeader } from '../../lib/block/overlay-header.js';

const layerId = '0123456789abcdef'.repeat(2);
const baseFingerprint = '000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f';

/** A frozen header: a 10 GiB + 1000 byte image in 64 KiB blocks. */
const frozen: OverlayHeader = {
  blockSize: 65536,
  virtualSize: 10737419240,
  baseSize: 10737419240,
  baseFingerprint,
  dirty: false,
  frozen: true,
  layerId,
  mapOffset: 4096,
  mapLength: 45056,
  dataOffset: 65536,
};

t.test('the fingerprint of the documented input, and the virtual size', async (t) => {
  // sha256("nbd-cow layer v1\n" || layer id || u64be(base size) || base fingerprint), computed
  // independently (Python hashlib).
  t.strictSame(layerIdentity(frozen), {
    size: 10737419240,
    fingerprint: '1078fea0d80e9549b807ac4b769d4aa8590471c7ef020272f857eefe0587d2bd',
  });
  t.strictSame(layerIdentity({ ...frozen }), layerIdentity(frozen), 'deterministic');
});

t.test('each input changes it; what is not an input does not', async (t) => {
  const id = layerIdentity(frozen).fingerprint;
  const changed: Array<[string, Partial<OverlayHeader>]> = [
    ['another layer id', { layerId: `${layerId.slice(0, 31)}e` }],
    ['another base size', { baseSize: frozen.baseSize - 1 }],
    ['another base fingerprint', { baseFingerprint: `${baseFingerprint.slice(0, 63)}0` }],
  ];
  const seen = new Set([id]);
  for (const [what, change] of changed) {
    const other = layerIdentity({ ...frozen, ...change }).fingerprint;
    t.match(other, /^[0-9a-f]{64}$/, `${what}: 64 hex digits`);
    t.not(other, id, what);
    seen.add(other);
  }
  t.equal(seen.size, 4, 'all different');
  t.equal(layerIdentity({ ...frozen, virtualSize: 4096 }).size, 4096, 'the size is the virtual size');
  t.equal(
    layerIdentity({ ...frozen, virtualSize: 4096, blockSize: 512, mapLength: 4096, dataOffset: 8192 }).fingerprint,
    id,
    'the layout and the virtual size are not part of the fingerprint',
  );
});

t.test('a header that is not frozen has none', async (t) => {
  const { frozen: _f, layerId: _l, ...plain } = frozen;
  t.throws(() => layerIdentity({ ...frozen, frozen: false }), new RangeError('not a frozen overlay'));
  t.throws(() => layerIdentity(plain), RangeError, 'no frozen field');
  t.throws(() => layerIdentity({ ...plain, layerId }), RangeError, 'an id but not frozen');
  t.throws(() => layerIdentity({ ...plain, frozen: true }), RangeError, 'frozen without an id');
});
