// RemoteBaseElsewhere answers for the image's size and identity only: every data call is
// refused, naming the image and the lock file, so nothing is ever read through a worker that
// does not hold the block cache.

import t from 'tap';
import { RemoteBaseElsewhere } from '../../lib/remote/remote-base-elsewhere.js';

t.test('size and identity; each data call refused with EAGAIN', async (t) => {
  const identity = { size: 1 << 20, fingerprint: 'f'.repeat(64) };
  const base = new RemoteBaseElsewhere('https://images.example/golden.raw', identity, '/cache/golden-1234.lock');
  t.equal(base.size, 1 << 20);
  t.same(base.identity, identity);
  t.equal(base.writable, false);
  const calls: Array<[string, () => Promise<unknown>]> = [
    ['read', () => base.read()],
    ['write', () => base.write()],
    ['zero', () => base.zero()],
    ['trim', () => base.trim()],
    ['flush', () => base.flush()],
    ['cache', () => base.cache()],
    ['extents', () => base.extents()],
  ];
  for (const [name, call] of calls) {
    await t.rejects(
      call(),
      {
        code: 'EAGAIN',
        message:
          'https://images.example/golden.raw is served by the worker holding its block cache (lock file /cache/golden-1234.lock)',
      },
      name,
    );
  }
  await base.close();
});
