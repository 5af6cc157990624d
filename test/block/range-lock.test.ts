import t from 'tap';
import { RangeLock } from '../../lib/block/range-lock.js';

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

t.test('non-overlapping ranges are held together', async (t) => {
  const lock = new RangeLock();
  const a = await lock.acquire(0, 3);
  const b = await lock.acquire(4, 7);
  t.equal(lock.heldCount, 2);
  a();
  b();
  t.equal(lock.heldCount, 0);
});

t.test('an overlapping range waits for the release', async (t) => {
  const lock = new RangeLock();
  const a = await lock.acquire(2, 5);
  let got = false;
  const pending = lock.acquire(5, 9).then((release) => {
    got = true;
    return release;
  });
  await tick();
  t.equal(got, false, 'still waiting');
  t.equal(lock.waitingCount, 1);
  a();
  const release = await pending;
  t.equal(got, true);
  release();
  release(); // a second call is harmless
  t.equal(lock.heldCount, 0);
});

t.test('FIFO: a waiter is not overtaken by a later overlapping request', async (t) => {
  const lock = new RangeLock();
  const order: string[] = [];
  const first = await lock.acquire(0, 0);
  const w1 = lock.acquire(0, 1).then((r) => {
    order.push('w1');
    return r;
  });
  // Free of held ranges but overlaps w1, which came first: must queue behind it.
  const w2 = lock.acquire(1, 1).then((r) => {
    order.push('w2');
    return r;
  });
  // Overlaps nothing: passes at once.
  const w3 = await lock.acquire(5, 5);
  order.push('w3');
  await tick();
  t.same(order, ['w3']);
  first();
  (await w1)();
  (await w2)();
  w3();
  t.same(order, ['w3', 'w1', 'w2']);
});

t.test('many contenders on one block run one at a time', async (t) => {
  const lock = new RangeLock();
  let inside = 0;
  let maxInside = 0;
  await Promise.all(
    Array.from({ length: 50 }, (_, i) =>
      lock.acquire(i % 3, 3 + (i % 2)).then(async (release) => {
        inside++;
        maxInside = Math.max(maxInside, inside);
        await tick();
        inside--;
        release();
      }),
    ),
  );
  t.equal(maxInside, 1, 'all overlap block 3');
});

t.test('tryHold: at once when free, null behind a held or an earlier waiting range', async (t) => {
  const lock = new RangeLock();
  const a = lock.tryHold(0, 3);
  if (a === null) return void t.fail('a free range is held at once');
  t.equal(lock.heldCount, 1);
  t.equal(lock.tryHold(3, 5), null, 'overlaps a held range');
  const b = lock.tryHold(4, 5);
  t.not(b, null, 'beside it: held too');
  const waiting = lock.acquire(5, 6); // behind b
  t.equal(lock.tryHold(6, 7), null, 'free of held ranges but overlapping an earlier waiter: no overtaking');
  a();
  b?.();
  (await waiting)();
  t.equal(lock.heldCount, 0);
  t.equal(lock.waitingCount, 0);
});
