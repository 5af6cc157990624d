import t from 'tap';
import { type BudgetHolder, MemoryBudget } from '../../lib/server/memory-budget.js';
import { waitFor } from '../helpers/wait.js';

const MiB = 1024 * 1024;

/** What a connection does: take the bytes now, or wait in line for them. */
function take(budget: MemoryBudget, bytes: number, granted: () => void): boolean {
  if (budget.tryTake(bytes)) return true;
  budget.wait(bytes, granted);
  return false;
}

t.test('take fits or waits; freed bytes go to the waiters that fit, in arrival order', async (t) => {
  const budget = new MemoryBudget({ limit: 10 * MiB, stallMs: 60_000 });
  const granted: string[] = [];
  t.ok(
    take(budget, 6 * MiB, () => granted.push('never')),
    'fits',
  );
  t.equal(budget.used, 6 * MiB);
  t.notOk(
    take(budget, 6 * MiB, () => granted.push('big')),
    'does not fit: waits',
  );
  t.ok(
    take(budget, 1 * MiB, () => granted.push('never')),
    'fits: taken at once, though a larger request waits (first fit)',
  );
  t.notOk(
    take(budget, 4 * MiB, () => granted.push('medium')),
    'does not fit: waits behind the big one',
  );
  t.equal(budget.waiting, 2);
  budget.adjust(-1 * MiB);
  t.same(granted, ['medium'], '6 MiB taken: the medium one fits, the big one still does not');
  budget.adjust(-4 * MiB);
  t.same(granted, ['medium'], '6 MiB taken again: the big one still waits');
  budget.adjust(-6 * MiB);
  t.same(granted, ['medium', 'big'], 'the big one, once there is room');
  t.equal(budget.used, 6 * MiB, 'its bytes are taken for it');
  t.equal(budget.waiting, 0);
  budget.adjust(6 * MiB);
  t.equal(budget.used, 12 * MiB, 'adjust up is never refused');
  t.notOk(budget.tryTake(1), 'nothing fits past the limit');
});

t.test('a waiter that fits is granted when room comes back, whatever waits before it', async (t) => {
  const budget = new MemoryBudget({ limit: 64 * MiB, stallMs: 60_000 });
  const granted: string[] = [];
  budget.adjust(64 * MiB); // all of it held by clients that do not read
  for (let i = 0; i < 5; i++) take(budget, 32 * MiB, () => granted.push(`large ${i}`));
  take(budget, 4096, () => granted.push('small'));
  budget.adjust(-(16 * MiB));
  t.same(granted, ['small'], 'the 4 KiB read goes through; no 32 MiB one fits yet');
  budget.adjust(-(48 * MiB + 4096));
  t.same(granted, ['small', 'large 0', 'large 1'], 'then the large ones, in order, as far as room allows');
});

t.test('cancel leaves the line', async (t) => {
  const budget = new MemoryBudget({ limit: 4 * MiB, stallMs: 60_000 });
  const granted: string[] = [];
  take(budget, 3 * MiB, () => undefined);
  const big = (): void => {
    granted.push('big');
  };
  take(budget, 4 * MiB, big);
  t.equal(budget.waiting, 1);
  budget.cancel(big);
  t.equal(budget.waiting, 0);
  budget.adjust(-3 * MiB);
  t.same(granted, [], 'a waiter that left is never granted');
  t.equal(budget.used, 0);
});

class FakeHolder implements BudgetHolder {
  queued: number;
  evicted: string | null = null;
  constructor(queued: number) {
    this.queued = queued;
  }
  queuedBytes(): number {
    return this.queued;
  }
  evict(reason: string): void {
    this.evicted = reason;
  }
}

t.test('while someone waits, a holder whose replies do not move is evicted; one that drains is not', async (t) => {
  const budget = new MemoryBudget({ limit: 8 * MiB, stallMs: 200, checkMs: 20 });
  const stuck = new FakeHolder(4 * MiB);
  const slow = new FakeHolder(4 * MiB);
  const idle = new FakeHolder(0);
  for (const h of [stuck, slow, idle]) budget.register(h);
  budget.adjust(8 * MiB);
  let granted = false;
  take(budget, 1 * MiB, () => {
    granted = true;
  });
  // `slow` keeps making progress: its queue shrinks a little at every look.
  const drain = setInterval(() => {
    slow.queued = Math.max(1, slow.queued - 64 * 1024);
  }, 10);
  t.teardown(() => clearInterval(drain));
  await waitFor(() => stuck.evicted !== null, 'the stuck holder is evicted', 5000);
  t.match(stuck.evicted, /have not been read for 200 ms while others wait for memory/);
  t.equal(slow.evicted, null, 'a client that reads slowly is left alone');
  t.equal(idle.evicted, null, 'a holder with nothing queued is left alone');
  // The evicted connection's bytes come back when it closes: the waiter gets in.
  budget.adjust(-4 * MiB);
  t.ok(granted, 'granted once the evicted connection released its bytes');
  clearInterval(drain);
});

t.test('nobody waiting: nobody is evicted, however long replies sit', async (t) => {
  const budget = new MemoryBudget({ limit: 8 * MiB, stallMs: 50, checkMs: 10 });
  const stuck = new FakeHolder(4 * MiB);
  budget.register(stuck);
  budget.adjust(4 * MiB);
  await new Promise((resolve) => setTimeout(resolve, 200));
  t.equal(stuck.evicted, null);
  budget.unregister(stuck);
  let granted = false;
  budget.adjust(4 * MiB);
  take(budget, 1, () => {
    granted = true;
  });
  await new Promise((resolve) => setTimeout(resolve, 200));
  t.equal(stuck.evicted, null, 'an unregistered holder is never evicted');
  t.notOk(granted);
  budget.adjust(-1);
  t.ok(granted);
});
