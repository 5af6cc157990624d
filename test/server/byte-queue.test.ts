import t from 'tap';
import { ByteQueue } from '../../lib/server/byte-queue.js';
import { hex } from '../helpers/hex.js';

const REQUEST = hex`25609513 0001 0001 0102030405060708 0000000000001000 00000004`;
const PAYLOAD = hex`deadbeef`;
const FRAME = Buffer.concat([REQUEST, PAYLOAD]);

t.test('an empty queue', async (t) => {
  const q = new ByteQueue();
  t.equal(q.length, 0);
  t.strictSame(q.take(0), Buffer.alloc(0));
  t.throws(() => q.take(1), RangeError);
  t.equal(q.skip(10), 0);
  q.push(Buffer.alloc(0));
  t.equal(q.length, 0, 'an empty chunk is ignored');
});

t.test('take returns bytes in order and keeps the rest', async (t) => {
  const q = new ByteQueue();
  q.push(hex`0102030405`);
  q.push(hex`060708`);
  t.equal(q.length, 8);
  t.strictSame(q.take(2), hex`0102`);
  t.strictSame(q.take(0), Buffer.alloc(0), 'take(0)');
  t.strictSame(q.take(4), hex`03040506`, 'spanning two chunks');
  t.equal(q.length, 2);
  t.throws(() => q.take(3), { name: 'RangeError', message: /take\(3\) with only 2 bytes/ });
  t.equal(q.length, 2, 'a refused take changes nothing');
  t.strictSame(q.take(2), hex`0708`);
  t.equal(q.length, 0);
});

t.test('skip drops up to n bytes across chunks', async (t) => {
  const q = new ByteQueue();
  q.push(hex`0102`);
  q.push(hex`030405`);
  q.push(hex`06`);
  t.equal(q.skip(1), 1);
  t.equal(q.skip(3), 3, 'across a chunk boundary');
  t.equal(q.length, 2);
  t.strictSame(q.take(1), hex`05`);
  t.equal(q.skip(10), 1, 'only what is there');
  t.equal(q.length, 0);
  t.equal(q.skip(0), 0);
  q.push(hex`aabb`);
  t.strictSame(q.take(2), hex`aabb`, 'usable after draining');
});

t.test('clear drops everything', async (t) => {
  const q = new ByteQueue();
  q.push(hex`010203`);
  q.take(1);
  q.push(hex`0405`);
  q.clear();
  t.equal(q.length, 0);
  t.throws(() => q.take(1), RangeError);
  q.push(hex`09`);
  t.strictSame(q.take(1), hex`09`, 'usable after clear');
});

t.test('take of bytes inside one chunk is a view, not a copy', async (t) => {
  const q = new ByteQueue();
  const chunk = Buffer.from(FRAME);
  q.push(chunk);
  const whole = q.take(chunk.length);
  t.equal(whole.buffer, chunk.buffer, 'exactly a chunk: same ArrayBuffer');
  t.equal(whole.byteOffset, chunk.byteOffset);
  t.equal(whole.length, chunk.length);

  q.push(chunk);
  const head = q.take(28);
  const rest = q.take(4);
  t.equal(head.buffer, chunk.buffer, 'a prefix is a view');
  t.equal(rest.buffer, chunk.buffer, 'the remainder is a view');
  t.equal(rest.byteOffset, chunk.byteOffset + 28);
  chunk[28] = 0x11;
  t.equal(rest[0], 0x11, 'shares memory with the chunk');
});

t.test('take spanning chunks copies into a buffer of exactly n bytes', async (t) => {
  const q = new ByteQueue();
  const a = Buffer.from(FRAME.subarray(0, 10));
  const b = Buffer.from(FRAME.subarray(10));
  q.push(a);
  q.push(b);
  const out = q.take(FRAME.length);
  t.strictSame(out, FRAME);
  t.equal(out.length, FRAME.length);
  a.fill(0);
  b.fill(0);
  t.strictSame(out, FRAME, 'a copy: independent of the chunks');
});

t.test('one frame split at every byte offset', async (t) => {
  for (let cut = 0; cut <= FRAME.length; cut++) {
    const q = new ByteQueue();
    q.push(FRAME.subarray(0, cut));
    if (cut < 28) t.ok(q.length < 28, `cut ${cut}: header not complete yet`);
    q.push(FRAME.subarray(cut));
    t.equal(q.length, FRAME.length);
    t.strictSame(q.take(28), REQUEST, `cut ${cut}: header`);
    t.strictSame(q.take(4), PAYLOAD, `cut ${cut}: payload`);
    t.equal(q.length, 0);
  }
});

t.test('one frame fed one byte at a time', async (t) => {
  const q = new ByteQueue();
  for (const byte of FRAME) q.push(Buffer.from([byte]));
  t.strictSame(q.take(28), REQUEST);
  t.strictSame(q.take(4), PAYLOAD);
});

t.test('two frames split across three chunks at every pair of offsets', async (t) => {
  const second = hex`25609513 0000 0000 ffffffffffffffff 0000000000000000 00000200`;
  const stream = Buffer.concat([FRAME, second]);
  let checked = 0;
  for (let i = 0; i <= stream.length; i++) {
    for (let j = i; j <= stream.length; j++) {
      const q = new ByteQueue();
      q.push(stream.subarray(0, i));
      q.push(stream.subarray(i, j));
      q.push(stream.subarray(j));
      const frames = [q.take(28), q.take(4), q.take(28)];
      if (!frames[0]?.equals(REQUEST) || !frames[1]?.equals(PAYLOAD) || !frames[2]?.equals(second) || q.length !== 0) {
        t.fail(`split at ${i}/${j}`);
        return;
      }
      checked++;
    }
  }
  t.equal(checked, ((stream.length + 1) * (stream.length + 2)) / 2, 'every split checked');
});

t.test('skip then take across three chunks (a discarded payload)', async (t) => {
  for (let cut = 0; cut <= 36; cut++) {
    const stream = Buffer.concat([Buffer.alloc(32, 0xee), REQUEST]);
    const q = new ByteQueue();
    q.push(stream.subarray(0, cut));
    let skipped = q.skip(32);
    q.push(stream.subarray(cut, cut + 10));
    skipped += q.skip(32 - skipped);
    q.push(stream.subarray(cut + 10));
    skipped += q.skip(32 - skipped);
    t.equal(skipped, 32, `cut ${cut}: payload skipped`);
    t.strictSame(q.take(28), REQUEST, `cut ${cut}: next header intact`);
  }
});

t.test('takeChunks returns the bytes as views of the chunks they arrived in', async (t) => {
  const q = new ByteQueue();
  const a = Buffer.from(FRAME.subarray(0, 10));
  const b = Buffer.from(FRAME.subarray(10, 20));
  const c = Buffer.from(FRAME.subarray(20));
  for (const chunk of [a, b, c]) q.push(chunk);
  q.take(4); // a request that started mid-chunk
  const pieces = q.takeChunks(20);
  t.same(
    pieces.map((p) => p.length),
    [6, 10, 4],
    'the rest of a, all of b, the start of c',
  );
  t.strictSame(Buffer.concat(pieces), FRAME.subarray(4, 24));
  t.equal(pieces[0]?.buffer, a.buffer, 'views, not copies');
  t.equal(pieces[2]?.buffer, c.buffer);
  t.equal(q.length, FRAME.length - 24, 'the rest stays queued');
  t.strictSame(q.take(q.length), FRAME.subarray(24));
  q.push(Buffer.from(FRAME));
  t.same(
    q.takeChunks(8).map((p) => p.length),
    [8],
    'inside one chunk: one view',
  );
  t.throws(() => q.takeChunks(FRAME.length), RangeError, 'more than is queued');
});

t.test('a volatile chunk: what is taken from it is a copy, and settle() copies what is left', async (t) => {
  const q = new ByteQueue();
  const scratch = Buffer.from(FRAME);
  q.push(hex`aa`);
  q.pushVolatile(scratch.subarray(0, 20));
  const first = q.take(1);
  const header = q.take(8);
  const chunks = q.takeChunks(4);
  q.settle();
  scratch.fill(0xff); // the memory is reused: nothing taken or queued may see it
  t.strictSame(first, hex`aa`, 'a non-volatile chunk is still given as it is');
  t.strictSame(header, FRAME.subarray(0, 8), 'take() copied');
  t.strictSame(Buffer.concat(chunks), FRAME.subarray(8, 12), 'takeChunks() copied');
  t.equal(q.length, 8);
  t.strictSame(q.take(8), FRAME.subarray(12, 20), 'settle() kept the rest as it was');

  const dest = Buffer.alloc(6);
  q.pushVolatile(Buffer.from('xyz'));
  q.push(Buffer.from('123'));
  q.takeInto(dest);
  t.equal(dest.toString(), 'xyz123', 'takeInto() copies across chunks');
  t.equal(q.length, 0);
  q.settle();
  t.equal(q.length, 0, 'settle() with the volatile chunk consumed changes nothing');
  t.throws(() => q.takeInto(Buffer.alloc(1)), { name: 'RangeError', message: /takeInto\(1\) with only 0 bytes/ });
  q.pushVolatile(Buffer.alloc(0));
  q.settle();
  t.equal(q.length, 0, 'an empty volatile chunk is ignored');
});
