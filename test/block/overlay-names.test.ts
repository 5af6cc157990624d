import t from 'tap';
import { ephemeralOverlayPid } from '../../lib/block/ephemeral.js';
import { isValidNamePart, lockFileName, namedOverlayFileName, splitNamedExport } from '../../lib/block/overlay-names.js';

t.test('name parts: [A-Za-z0-9._-], 1-64 characters, not starting with "."', async (t) => {
  for (const ok of ['a', 'alice', 'A-b_c.d', '0', 'x'.repeat(64), 'golden.v2', '-x', '_']) t.ok(isValidNamePart(ok), ok);
  for (const bad of ['', '.', '..', '.hidden', '../x', 'a/b', 'a\\b', 'a b', 'a@b', 'x'.repeat(65), 'é', 'a\0b', 'a\nb']) {
    t.notOk(isValidNamePart(bad), JSON.stringify(bad));
  }
});

t.test('EXPORT@NAME splits at the last @', async (t) => {
  t.same(splitNamedExport('golden@alice'), { exportName: 'golden', overlayName: 'alice' });
  t.same(splitNamedExport('golden@'), { exportName: 'golden', overlayName: '' });
  t.same(splitNamedExport('a@b@c'), { exportName: 'a@b', overlayName: 'c' });
  t.equal(splitNamedExport('golden'), undefined);
});

t.test('file names never collide with ephemeral ones and refuse bad parts', async (t) => {
  const name = namedOverlayFileName('golden', 'alice');
  t.equal(name, 'named-golden@alice.cow');
  t.equal(ephemeralOverlayPid(name), undefined, 'not matched by the start-up sweep');
  t.equal(lockFileName(name), 'named-golden@alice.cow.lock');
  t.throws(() => namedOverlayFileName('golden', '../etc'), RangeError);
  t.throws(() => namedOverlayFileName('a b', 'x'), RangeError);
});
