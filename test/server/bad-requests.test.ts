// Malformed and refused input on a live server: which errors keep the connection and which
// close it, with the exact reply bytes.

import t, { type Test } from 'tap';
import { hex } from '../helpers/hex.js';
import type { RawClient } from '../helpers/raw-nbd/client.js';
import { greet } from '../helpers/raw-nbd/negotiate.js';
import { readChunk, readOptionReplies, readSimpleReply } from '../helpers/raw-nbd/replies.js';
import { infoRequestData, metaContextData, optionBytes, requestBytes } from '../helpers/raw-nbd/wire.js';
import { type ServerFixture, startFixture } from '../helpers/server-fixture.js';

const SIZE = 64 * 1024;

function start(t: Test): Promise<ServerFixture> {
  return startFixture(t, SIZE);
}

async function stillServes(t: Test, client: RawClient, bytes: Buffer, cookie = 0xabcn): Promise<void> {
  client.write(requestBytes({ type: 0, cookie, offset: 8, length: 8 }));
  const reply = await readSimpleReply(client);
  t.equal(reply.cookie, cookie, 'the connection still answers');
  t.strictSame(await client.read(8), bytes.subarray(8, 16));
}

t.test('bad request magic closes that connection; another one is unaffected', async (t) => {
  const f = await start(t);
  const other = await f.connect();
  const { client } = await f.connect();
  client.write(hex`25609514 0000 0000 0000000000000001 0000000000000000 00000008`);
  t.ok(await client.closed(), 'closed');
  t.equal(client.buffered, 0, 'no reply');
  await stillServes(t, other.client, f.base.bytes);
});

t.test('a simple reply magic sent as a request closes the connection', async (t) => {
  const f = await start(t);
  const { client } = await f.connect();
  client.write(hex`67446698 00000000 0000000000000001 0000000000000000 00000000`);
  t.ok(await client.closed());
});

t.test('refused requests reply with an errno and keep the connection', async (t) => {
  const f = await start(t);
  const { client } = await f.connect();
  const cases: [string, Buffer, number][] = [
    ['unknown command 8', requestBytes({ type: 8, cookie: 1n, length: 8 }), 22],
    ['unknown command 0xffff', requestBytes({ type: 0xffff, cookie: 2n }), 22],
    ['READ with NO_HOLE', requestBytes({ type: 0, flags: 0x02, cookie: 3n, length: 8 }), 22],
    ['READ with an undefined flag', requestBytes({ type: 0, flags: 0x40, cookie: 4n, length: 8 }), 22],
    ['FLUSH with an offset', requestBytes({ type: 3, cookie: 5n, offset: 512 }), 22],
    ['FLUSH with a length', requestBytes({ type: 3, cookie: 6n, length: 512 }), 22],
    ['TRIM past end', requestBytes({ type: 4, cookie: 7n, offset: SIZE, length: 512 }), 22],
    ['WRITE_ZEROES past end', requestBytes({ type: 6, cookie: 8n, offset: SIZE - 1, length: 2 }), 28],
    ['CACHE past end', requestBytes({ type: 5, cookie: 9n, offset: SIZE, length: 1 }), 22],
    ['BLOCK_STATUS without structured replies', requestBytes({ type: 7, cookie: 10n, length: 512 }), 22],
  ];
  for (const [name, bytes, errno] of cases) {
    client.write(bytes);
    const reply = await readSimpleReply(client);
    t.equal(reply.error, errno, name);
    t.equal(reply.cookie, bytes.readBigUInt64BE(8), `${name}: cookie`);
  }
  await stillServes(t, client, f.base.bytes);
});

t.test('zero-length requests succeed', async (t) => {
  const f = await start(t);
  const { client } = await f.connect();
  for (const type of [0, 1, 4, 5, 6]) {
    client.write(requestBytes({ type, cookie: BigInt(type + 1), offset: 100 }));
    t.strictSame(
      (await readSimpleReply(client)).bytes,
      Buffer.concat([hex`67446698 00000000`, requestBytes({ type, cookie: BigInt(type + 1) }).subarray(8, 16)]),
      `type ${type}`,
    );
  }
  await stillServes(t, client, f.base.bytes);
});

t.test('with structured replies every refusal is an ERROR chunk', async (t) => {
  const f = await start(t);
  const { client } = await f.connect({ structured: true });
  for (const [cookie, bytes] of [
    [1n, requestBytes({ type: 8, cookie: 1n })],
    [2n, requestBytes({ type: 0, cookie: 2n, offset: SIZE, length: 1 })],
    [3n, requestBytes({ type: 1, cookie: 3n, offset: SIZE + 1, length: 0 })],
  ] as const) {
    client.write(bytes);
    const chunk = await readChunk(client);
    t.equal(chunk.type, 0x8001, `cookie ${cookie}: NBD_REPLY_TYPE_ERROR`);
    t.equal(chunk.flags, 1, 'DONE');
    t.equal(chunk.cookie, cookie);
    t.ok(chunk.payload.readUInt32BE(0) !== 0, 'non-zero error');
  }
});

t.test('option errors keep negotiation going', async (t) => {
  const f = await start(t);
  const client = await f.raw();
  await greet(client);
  const expectations: [string, Buffer, number][] = [
    ['GO with a name longer than its data', optionBytes(7, hex`00000010 61`), 0x80000003],
    ['GO with trailing bytes', optionBytes(7, hex`00000000 0000 ff`), 0x80000003],
    ['INFO with a 4097-byte name', optionBytes(6, infoRequestData('a'.repeat(4097))), 0x80000003],
    ['SET_META_CONTEXT before STRUCTURED_REPLY', optionBytes(10, metaContextData('', ['base:allocation'])), 0x80000003],
    ['LIST with data', optionBytes(3, hex`00`), 0x80000003],
    ['STARTTLS', optionBytes(5), 0x80000002],
    ['PEEK_EXPORT', optionBytes(4), 0x80000001],
    ['EXTENDED_HEADERS', optionBytes(11), 0x80000001],
    ['INFO for an unknown export', optionBytes(6, infoRequestData('nope')), 0x80000006],
  ];
  for (const [name, bytes, replyType] of expectations) {
    client.write(bytes);
    const replies = await readOptionReplies(client);
    t.strictSame(
      replies.map((r) => r.replyType),
      [replyType],
      name,
    );
    t.equal(replies[0]?.option, bytes.readUInt32BE(8), `${name}: option echoed`);
  }
  client.write(optionBytes(7, infoRequestData('')));
  t.strictSame(
    (await readOptionReplies(client)).map((r) => r.replyType),
    [3, 1],
    'GO still works',
  );
  await stillServes(t, client, f.base.bytes);
});

t.test('a whole session fed one byte at a time', async (t) => {
  const f = await start(t);
  const client = await f.raw();
  t.strictSame(await client.read(18), hex`4e42444d41474943 49484156454f5054 0003`);
  const feed = async (bytes: Buffer): Promise<void> => {
    for (const byte of bytes) {
      client.socket.write(Buffer.from([byte]));
      await new Promise((resolve) => setImmediate(resolve));
    }
  };
  await feed(
    Buffer.concat([
      hex`00000003`,
      optionBytes(0x63, hex`ffff`),
      optionBytes(7, infoRequestData('base')),
      requestBytes({ type: 1, cookie: 1n, offset: 10, length: 6 }),
      Buffer.from('abcdef'),
    ]),
  );
  t.strictSame(
    (await readOptionReplies(client)).map((r) => r.replyType),
    [0x80000001],
  );
  t.strictSame(
    (await readOptionReplies(client)).map((r) => r.replyType),
    [3, 1],
  );
  t.strictSame((await readSimpleReply(client)).bytes, hex`67446698 00000000 0000000000000001`);
  // Requests in flight may complete in any order, so the READ goes after the WRITE's reply.
  await feed(requestBytes({ type: 0, cookie: 2n, offset: 8, length: 10 }));
  t.strictSame((await readSimpleReply(client)).bytes, hex`67446698 00000000 0000000000000002`);
  t.strictSame(
    await client.read(10),
    Buffer.concat([f.base.bytes.subarray(8, 10), Buffer.from('abcdef'), f.base.bytes.subarray(16, 18)]),
  );
});

t.test('closing in the middle of a WRITE payload is handled', async (t) => {
  const f = await start(t);
  const { client } = await f.connect();
  client.write(requestBytes({ type: 1, cookie: 1n, length: 4096 }), Buffer.alloc(100, 1));
  client.socket.end();
  t.ok(await client.closed(), 'server closes too');
  const next = await f.connect();
  await stillServes(t, next.client, f.base.bytes);
});
