import type { Socket } from 'node:net';
import t from 'tap';
import { BufferPool, POOL_MIN_BYTES } from '../../lib/buffer-pool.js';
import { ReplyBatcher } from '../../lib/server/reply-batcher.js';

/** A socket that records cork/uncork/write calls and completes writes when told to. */
function fakeSocket() {
  const log: string[] = [];
  const callbacks: (() => void)[] = [];
  let queued = 0;
  const socket = {
    cork: () => log.push('cork'),
    uncork: () => log.push('uncork'),
    write: (buf: Buffer, cb?: () => void) => {
      log.push(`write ${buf.length}`);
      queued += buf.length;
      if (cb) callbacks.push(cb);
      return true;
    },
    get writableLength() {
      return queued;
    },
  };
  return { socket: socket as unknown as Socket, log, callbacks };
}

const nextTick = (): Promise<void> => new Promise((resolve) => process.nextTick(resolve));

t.test('everything written before the next tick shares one cork', async (t) => {
  const { socket, log } = fakeSocket();
  const replies = new ReplyBatcher(socket, new BufferPool());
  t.equal(replies.write([Buffer.alloc(16), Buffer.alloc(4096)]), 4112, 'returns the bytes queued');
  replies.write([Buffer.alloc(16)]);
  t.same(log, ['cork', 'write 16', 'write 4096', 'write 16'], 'corked until the tick ends');
  await nextTick();
  t.same(log.slice(4), ['uncork'], 'one uncork: one writev');
  replies.write([Buffer.alloc(8)]);
  t.same(log.slice(5), ['cork', 'write 8'], 'the next event starts a new batch');
});

t.test('flush sends the batch at once; the pending tick then does nothing', async (t) => {
  const { socket, log } = fakeSocket();
  const replies = new ReplyBatcher(socket, new BufferPool());
  replies.write([Buffer.alloc(16)]);
  replies.flush();
  replies.flush();
  await nextTick();
  t.same(log, ['cork', 'write 16', 'uncork']);
});

t.test('a pooled reply buffer goes back to the pool once the socket wrote it', async (t) => {
  const { socket, callbacks } = fakeSocket();
  const pool = new BufferPool();
  const reply = pool.acquire(POOL_MIN_BYTES);
  const replies = new ReplyBatcher(socket, pool);
  replies.write([Buffer.alloc(16), reply]);
  t.equal(callbacks.length, 1, 'only the large buffer waits for its write');
  t.equal(pool.pooledBytes, 0, 'not back while the socket may still read it');
  callbacks[0]?.();
  t.equal(pool.pooledBytes, POOL_MIN_BYTES, 'back in the pool after the write');
});
