import t from 'tap';
import { INLINE_MAX_BYTES, InlineIoGuard } from '../../lib/block/inline-io-guard.js';

t.test('small transfers may run inline, large ones never', async (t) => {
  const guard = new InlineIoGuard();
  t.ok(guard.allows(4096));
  t.ok(guard.allows(INLINE_MAX_BYTES));
  t.notOk(guard.allows(INLINE_MAX_BYTES + 1));
});

t.test('one very slow call sends the file to the threadpool until the cool-down ends', async (t) => {
  const guard = new InlineIoGuard();
  guard.record(performance.now() - 50); // a 50 ms call: a slow disk
  t.notOk(guard.allows(4096), 'threadpool after a slow call');
  await new Promise((resolve) => setTimeout(resolve, 600));
  t.ok(guard.allows(4096), 'inline again after the cool-down');
});

t.test('a slow average trips it; one moderate outlier among fast calls does not', async (t) => {
  const outlier = new InlineIoGuard();
  for (let i = 0; i < 50; i++) outlier.record(performance.now());
  outlier.record(performance.now() - 1.5); // one 1.5 ms blip: average 0.19 ms
  t.ok(outlier.allows(4096), 'a single outlier does not trip it');
  const missing = new InlineIoGuard();
  for (let i = 0; i < 20; i++) missing.record(performance.now() - 1); // every call 1 ms: cache misses
  t.notOk(missing.allows(4096), 'an average above the limit trips it');
});
