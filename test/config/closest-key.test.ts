import t from 'tap';
import { closestKey, editDistance } from '../../lib/config/closest-key.js';

const EXPORT_KEYS = ['base', 'description', 'read-only', 'block-size', 'overlays', 'overlay-dir', 'max-overlay-size', 'allow'];

t.test('another spelling of a known key finds it', async (t) => {
  for (const key of ['block_size', 'blockSize', 'BlockSize', 'BLOCK_SIZE', 'Block-Size', 'block size']) {
    t.equal(closestKey(key, EXPORT_KEYS), 'block-size', key);
  }
  t.equal(closestKey('maxOverlaySize', EXPORT_KEYS), 'max-overlay-size');
  t.equal(closestKey('readOnly', EXPORT_KEYS), 'read-only');
});

t.test('a typo within two edits finds the key', async (t) => {
  t.equal(closestKey('blok-size', EXPORT_KEYS), 'block-size');
  t.equal(closestKey('bsae', EXPORT_KEYS), 'base', 'a swap is two edits');
  t.equal(closestKey('overlay-dirs', EXPORT_KEYS), 'overlay-dir');
  t.equal(closestKey('alow', EXPORT_KEYS), 'allow');
});

t.test('no hint when nothing is close, or two keys are equally close', async (t) => {
  t.equal(closestKey('colour', EXPORT_KEYS), undefined);
  t.equal(closestKey('overlay', EXPORT_KEYS), 'overlays');
  t.equal(closestKey('user', ['users', 'uses']), undefined, 'one edit from both: no guess');
  t.equal(closestKey('x', []), undefined);
});

t.test('edit distance counts insertions, deletions and substitutions', async (t) => {
  const cases: [string, string, number][] = [
    ['', '', 0],
    ['', 'abc', 3],
    ['abc', '', 3],
    ['kitten', 'sitting', 3],
    ['base', 'base', 0],
    ['base', 'bases', 1],
    ['flaw', 'lawn', 2],
  ];
  for (const [a, b, distance] of cases) t.equal(editDistance(a, b), distance, `${a} → ${b}`);
});
