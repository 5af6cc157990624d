import t from 'tap';
import { BufferPool, POOL_MIN_BYTES } from '../lib/buffer-pool.js';

t.test('small requests are plain allocations, never pooled', async (t) => {
  const pool = new BufferPool();
  const small = pool.acquire(POOL_MIN_BYTES - 1);
  t.equal(small.length, POOL_MIN_BYTES - 1);
  pool.release(small);
  t.equal(pool.pooledBytes, 0);
});

t.test('a released buffer is reused for the next request of its size class', async (t) => {
  const pool = new BufferPool();
  const a = pool.acquire(1024 * 1024);
  t.equal(a.length, 1024 * 1024);
  pool.release(a);
  t.equal(pool.pooledBytes, 1024 * 1024);
  const b = pool.acquire(700 * 1024); // same class: 1 MiB
  t.equal(b.length, 700 * 1024, 'exact length view');
  t.equal(b.buffer, a.buffer, 'same backing store');
  t.equal(pool.pooledBytes, 0);
  const c = pool.acquire(1024 * 1024);
  t.not(c.buffer, a.buffer, 'a lent buffer is never handed out twice');
});

t.test('a double release and foreign buffers are ignored', async (t) => {
  const pool = new BufferPool();
  const a = pool.acquire(128 * 1024);
  pool.release(a);
  pool.release(a);
  t.equal(pool.pooledBytes, 128 * 1024, 'counted once');
  pool.release(Buffer.alloc(128 * 1024));
  t.equal(pool.pooledBytes, 128 * 1024, 'foreign buffer not adopted');
  const first = pool.acquire(128 * 1024);
  const second = pool.acquire(128 * 1024);
  t.not(first.buffer, second.buffer, 'the double release did not duplicate the store');
});

t.test('the byte budget and the largest class bound what is kept', async (t) => {
  const pool = new BufferPool(256 * 1024, 1024 * 1024);
  const bufs = [1, 2, 3].map(() => pool.acquire(128 * 1024));
  for (const b of bufs) pool.release(b);
  t.equal(pool.pooledBytes, 256 * 1024, 'the third one was dropped');
  const huge = pool.acquire(2 * 1024 * 1024);
  pool.release(huge);
  t.equal(pool.pooledBytes, 256 * 1024, 'above the largest class: never pooled');
});
