import t from 'tap';
import { Bitmap, BLOCK_DATA, BLOCK_ZERO } from '../../lib/block/bitmap.js';
import { OverlaySpace, SpaceBudget, spaceLimits } from '../../lib/block/space-budget.js';

t.test('spaceLimits: none without options; bad limits are refused', async (t) => {
  t.equal(spaceLimits(), undefined, 'no options: nothing is counted');
  t.same(spaceLimits(4096), { perOverlay: 4096 });
  const both = spaceLimits(undefined, 8192);
  t.equal(both?.perOverlay, Infinity, 'no limit of its own');
  t.equal(both?.shared?.limit, 8192);
  for (const bad of [0, -1, 1.5, Number.NaN, Infinity, 2 ** 53]) {
    t.throws(
      () => spaceLimits(bad),
      { name: 'RangeError', message: /overlay size limit .* is not a positive number of bytes/ },
      `${bad}`,
    );
    t.throws(() => spaceLimits(undefined, bad), { message: /overlay directory size limit/ }, `dir ${bad}`);
  }
});

t.test('take is all or nothing against its own limit and the shared budget', async (t) => {
  const shared = new SpaceBudget(10 * 512);
  const a = new OverlaySpace('a.cow', { perOverlay: 4 * 512, shared }, 512, 0);
  const b = new OverlaySpace('b.cow', { perOverlay: 8 * 512, shared }, 512, 0);
  a.take(3);
  t.throws(() => a.take(2), {
    code: 'ENOSPC',
    message: /overlay a\.cow: no room for 1024 more bytes of data \(it holds 1536 of its 2048/,
  });
  t.equal(a.used, 3 * 512, 'a refusal counts nothing');
  t.equal(shared.used, 3 * 512, 'not even in the shared budget');
  a.take(1);
  b.take(6);
  t.equal(shared.used, 10 * 512);
  t.throws(() => b.take(1), { code: 'ENOSPC', message: /the overlay directory holds 5120 of its 5120/ });
  t.equal(b.used, 6 * 512);
  a.give(2);
  b.take(2);
  t.equal(shared.used, 10 * 512, 'what a gave back, b can take');
  a.take(0);
  a.give(0);
  a.give(-3);
  t.equal(a.used, 2 * 512, 'zero and negative counts change nothing');
});

t.test('exchange checks only the difference: a request freeing as much as it needs always passes', async (t) => {
  const space = new OverlaySpace('x', { perOverlay: 2 * 4096 }, 4096, 2);
  space.exchange(2, 2);
  space.exchange(1, 3);
  t.equal(space.used, 0, 'freed two net');
  space.exchange(2, 0);
  t.throws(() => space.exchange(3, 2), { code: 'ENOSPC' }, 'one more than the limit');
  t.equal(space.used, 2 * 4096);
});

t.test('takeForData counts only blocks not yet data; giveUnwritten what a failure left', async (t) => {
  const map = new Bitmap(16);
  map.setRange(0, 4, BLOCK_DATA);
  map.setRange(4, 2, BLOCK_ZERO);
  const space = new OverlaySpace('x', { perOverlay: 16 * 4096 }, 4096, 4);
  t.equal(space.takeForData(map, 2, 6), 4, 'blocks 4-7: two zero, two base');
  t.equal(space.used, 8 * 4096);
  map.setRange(4, 1, BLOCK_DATA); // the request wrote block 4, then failed
  space.giveUnwritten(map, 2, 6);
  t.equal(space.used, 5 * 4096, 'blocks 0-4 counted');
});

t.test('an overlay opened with data counts it, even past a limit; release leaves the shared budget', async (t) => {
  const shared = new SpaceBudget(4 * 4096);
  const big = new OverlaySpace('big', { perOverlay: 2 * 4096, shared }, 4096, 5);
  t.equal(big.used, 5 * 4096);
  t.equal(shared.used, 5 * 4096, 'counted though past both limits');
  t.throws(() => big.take(1), { code: 'ENOSPC' });
  big.give(4);
  t.throws(() => big.take(2), { code: 'ENOSPC', message: /it holds 4096 of its 8192/ });
  big.take(1);
  big.release();
  big.release();
  t.equal(shared.used, 0, 'released once');
  big.give(1);
  t.equal(shared.used, 0, 'a released overlay no longer touches the shared budget');
});
