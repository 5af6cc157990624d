// A real server (startServer) over TCP and a unix socket, driven by a raw client with
// hand-written bytes: exact replies, and whether the socket stays open.

import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { type ListenAddress, type ServerOptions, startServer } from '../../lib/index.js';
import { writeBaseFile } from '../helpers/bases.js';
import { hex } from '../helpers/hex.js';
import { RawClient } from '../helpers/raw-nbd/client.js';
import { greet } from '../helpers/raw-nbd/negotiate.js';
import { readChunk, readOptionReplies, readOptionReply, readSimpleReply } from '../helpers/raw-nbd/replies.js';
import { infoRequestData, optionBytes, requestBytes } from '../helpers/raw-nbd/wire.js';
import { type ServerFixture, shortDir, startFixture } from '../helpers/server-fixture.js';
import { waitFor, within } from '../helpers/wait.js';

const SIZE = 64 * 1024;
const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7 } as const;
const EPERM = 1;
const EINVAL = 22;
const GREETING = hex`4e42444d41474943 # NBDMAGIC
                     49484156454f5054 # IHAVEOPT
                     0003             # FIXED_NEWSTYLE | NO_ZEROES`;

function start(t: Test, options: Partial<ServerOptions> = {}, listen?: (dir: string) => ListenAddress): Promise<ServerFixture> {
  return startFixture(t, SIZE, options, listen);
}

/** Send a READ and check the simple reply and its data. */
async function readBack(
  t: Test,
  client: RawClient,
  offset: number,
  length: number,
  expected: Buffer,
  cookie = 0x77n,
): Promise<void> {
  client.write(requestBytes({ type: CMD.READ, cookie, offset, length }));
  const reply = await readSimpleReply(client);
  t.equal(reply.error, 0, `READ ${offset}+${length} succeeds`);
  t.equal(reply.cookie, cookie, 'cookie echoed');
  t.strictSame(await client.read(length), expected, `READ ${offset}+${length} data`);
}

function overlays(dir: string): string[] {
  return readdirSync(dir).filter((name) => name.endsWith('.cow'));
}

t.test('greeting bytes, over TCP and over a unix socket', async (t) => {
  for (const [kind, listen] of [
    ['tcp', undefined],
    ['unix', (): ListenAddress => ({ kind: 'unix', path: join(shortDir(t), 'nbd.sock') })],
  ] as const) {
    await t.test(kind, async (t) => {
      const f = await start(t, {}, listen);
      t.equal(f.server.address.kind, kind);
      const client = await f.raw();
      t.strictSame(await client.read(18), GREETING);
      client.write(hex`00000003`);
      client.write(optionBytes(7, infoRequestData('')));
      const replies = await readOptionReplies(client);
      t.strictSame(
        replies.map((r) => r.replyType),
        [3, 1],
      );
      await readBack(t, client, 1000, 100, f.base.bytes.subarray(1000, 1100));
    });
  }
});

t.test('unix socket file is removed by stop()', async (t) => {
  const dir = shortDir(t);
  const { server } = await start(t, {}, () => ({ kind: 'unix', path: join(dir, 'nbd.sock') }));
  t.ok(readdirSync(dir).includes('nbd.sock'));
  t.match(server.uri, /^nbd\+unix:\/\/\/base\?socket=/);
  await within(server.stop(), 10_000, 'stop');
  t.notOk(readdirSync(dir).includes('nbd.sock'));
});

t.test('a unix socket path longer than sun_path is refused with a clear error', async (t) => {
  const dir = shortDir(t);
  const base = writeBaseFile(dir, SIZE);
  const path = join(dir, `${'s'.repeat(120)}.sock`);
  const server = await startServer({
    base: base.path,
    listen: { kind: 'unix', path },
    overlayDir: join(dir, 'o'),
    logLevel: 'silent',
  }).catch((err: unknown) => err as Error);
  if (!(server instanceof Error)) {
    await server.stop();
    t.fail(`listened; the socket files are ${readdirSync(dir).join(', ')}`);
    return;
  }
  t.match(server.message, /too long/);
});

t.test('unknown client flags close the connection', async (t) => {
  const f = await start(t);
  for (const flags of [hex`00000004`, hex`80000001`, hex`ffffffff`]) {
    const client = await f.raw();
    t.strictSame(await client.read(18), GREETING);
    client.write(flags);
    t.ok(await client.closed(), `flags ${flags.toString('hex')}: closed`);
    t.equal(client.buffered, 0, 'nothing sent after the greeting');
  }
});

t.test('client flags 0 (plain newstyle) are accepted', async (t) => {
  const f = await start(t);
  const client = await f.raw();
  await greet(client, 0);
  client.write(optionBytes(7, infoRequestData('')));
  t.strictSame(
    (await readOptionReplies(client)).map((r) => r.replyType),
    [3, 1],
  );
});

t.test('unknown option: ERR_UNSUP, its data skipped, a following GO works', async (t) => {
  const f = await start(t);
  const client = await f.raw();
  await greet(client);
  client.write(optionBytes(0x63, hex`0102030405`));
  const reply = await readOptionReply(client);
  t.strictSame(reply.bytes.subarray(0, 16), hex`0003e889045565a9 00000063 80000001`);
  t.equal(reply.payload.toString(), 'NBD_OPT_UNKNOWN(99) is not supported');
  client.write(optionBytes(11));
  t.equal((await readOptionReply(client)).replyType, 0x80000001, 'EXTENDED_HEADERS: ERR_UNSUP');
  client.write(optionBytes(7, infoRequestData('')));
  const go = await readOptionReplies(client);
  t.strictSame(
    go.map((r) => r.replyType),
    [3, 1],
  );
  t.strictSame(go[0]?.bytes.subarray(0, 22), hex`0003e889045565a9 00000007 00000003 0000000c 0000`, 'NBD_INFO_EXPORT');
  t.equal(Number(go[0]?.payload.readBigUInt64BE(2)), SIZE);
  await readBack(t, client, 0, 16, f.base.bytes.subarray(0, 16));
});

t.test('option with data length 0xffffffff closes that connection only', async (t) => {
  const f = await start(t);
  const good = await f.connect();
  const bad = await f.raw();
  await greet(bad);
  bad.write(optionBytes(7, Buffer.alloc(0), 0xffffffff));
  t.ok(await bad.closed(), 'closed');
  t.equal(bad.buffered, 0, 'no reply');
  await readBack(t, good.client, 10, 10, f.base.bytes.subarray(10, 20));
  const again = await f.connect();
  await readBack(t, again.client, 20, 10, f.base.bytes.subarray(20, 30));
});

t.test('a bad option magic closes the connection', async (t) => {
  const f = await start(t);
  const client = await f.raw();
  await greet(client);
  client.write(hex`4e42444d41474943 00000007 00000000`);
  t.ok(await client.closed());
});

t.test('too many options without choosing an export close the connection', async (t) => {
  const f = await start(t, { limits: { maxOptions: 3 } });
  const client = await f.raw();
  await greet(client);
  for (let i = 0; i < 3; i++) {
    client.write(optionBytes(0x63));
    t.equal((await readOptionReply(client)).replyType, 0x80000001);
  }
  client.write(optionBytes(0x63));
  t.ok(await client.closed(), 'the fourth option closes');
});

t.test('ABORT is acknowledged, then the server closes', async (t) => {
  const f = await start(t);
  const client = await f.raw();
  await greet(client);
  client.write(optionBytes(2));
  t.strictSame(await client.readToEnd(), hex`0003e889045565a9 00000002 00000001 00000000`);
});

t.test('LIST names the export (the base file name without extension)', async (t) => {
  const f = await start(t, { description: 'test disk' });
  t.equal(f.server.exportName, 'base');
  const client = await f.raw();
  await greet(client);
  client.write(optionBytes(3));
  const replies = await readOptionReplies(client);
  t.strictSame(
    replies.map((r) => r.bytes),
    [
      hex`0003e889045565a9 00000003 00000002 00000011 # LIST, REP_SERVER, 17 bytes
          00000004 62617365                          # "base"
          74657374206469736b                         # "test disk"`,
      hex`0003e889045565a9 00000003 00000001 00000000`,
    ],
  );
});

t.test('GO with an unknown export: ERR_UNKNOWN, then GO on the right one works', async (t) => {
  const f = await start(t);
  const client = await f.raw();
  await greet(client);
  client.write(optionBytes(7, infoRequestData('nope')));
  const [err] = await readOptionReplies(client);
  t.equal(err?.replyType, 0x80000006);
  client.write(optionBytes(7, infoRequestData('base', [3])));
  const go = await readOptionReplies(client);
  t.strictSame(
    go.map((r) => [r.replyType, r.replyType === 3 ? r.payload.readUInt16BE(0) : -1]),
    [
      [3, 0],
      [3, 3],
      [1, -1],
    ],
    'INFO_EXPORT, INFO_BLOCK_SIZE, ACK',
  );
});

t.test('EXPORT_NAME with and without NO_ZEROES: 134 vs 10 bytes', async (t) => {
  const f = await start(t);
  for (const [clientFlags, length] of [
    [1, 134],
    [3, 10],
  ] as const) {
    const client = await f.raw();
    await greet(client, clientFlags);
    client.write(optionBytes(1, Buffer.from('base')));
    const reply = await client.read(length);
    t.equal(Number(reply.readBigUInt64BE(0)), SIZE, `flags ${clientFlags}: size`);
    const flags = reply.readUInt16BE(8);
    t.equal(flags & 0x0001, 1, 'HAS_FLAGS');
    t.equal(flags & 0x0100, 0, 'no CAN_MULTI_CONN');
    t.equal(flags & 0x0080, 0, 'no DF without structured replies');
    t.ok(
      reply.subarray(10).every((b) => b === 0),
      'zero padding',
    );
    await readBack(t, client, 0, 32, f.base.bytes.subarray(0, 32));
    t.equal(client.buffered, 0, `exactly ${length} bytes before the READ reply`);
  }
  const unknown = await f.raw();
  await greet(unknown);
  unknown.write(optionBytes(1, Buffer.from('nope')));
  t.strictSame(await unknown.readToEnd(), Buffer.alloc(0), 'an unknown EXPORT_NAME closes without a byte');
});

t.test('WRITE past end: ENOSPC, payload consumed, the next request works', async (t) => {
  const f = await start(t);
  const { client } = await f.connect();
  client.write(requestBytes({ type: CMD.WRITE, cookie: 1n, offset: SIZE - 2, length: 4 }), hex`aaaaaaaa`);
  client.write(requestBytes({ type: CMD.WRITE, cookie: 2n, offset: SIZE, length: 512 }), Buffer.alloc(512, 0x25));
  const replies = [await readSimpleReply(client), await readSimpleReply(client)].sort((a, b) => Number(a.cookie - b.cookie));
  t.strictSame(
    replies.map((r) => r.bytes),
    [hex`67446698 0000001c 0000000000000001`, hex`67446698 0000001c 0000000000000002`],
  );
  await readBack(t, client, SIZE - 4, 4, f.base.bytes.subarray(SIZE - 4), 3n);
});

t.test('READ past end: EINVAL without data', async (t) => {
  const f = await start(t);
  const { client } = await f.connect();
  client.write(requestBytes({ type: CMD.READ, cookie: 5n, offset: SIZE - 1, length: 2 }));
  t.strictSame((await readSimpleReply(client)).bytes, hex`67446698 00000016 0000000000000005`);
  client.write(requestBytes({ type: CMD.READ, cookie: 6n, offset: 0xffffffffffffff00n, length: 1 }));
  t.strictSame((await readSimpleReply(client)).bytes, hex`67446698 00000016 0000000000000006`, 'offset near 2^64');
  await readBack(t, client, 0, 8, f.base.bytes.subarray(0, 8));
});

t.test('WRITE of more than 64 MiB: refused with EINVAL, payload streamed away, connection alive', async (t) => {
  const f = await start(t);
  const { client } = await f.connect();
  const total = 65 * 1024 * 1024;
  client.write(requestBytes({ type: CMD.WRITE, cookie: 9n, offset: 0, length: total }));
  const piece = Buffer.alloc(1024 * 1024, 0x5a);
  for (let sent = 0; sent < total; sent += piece.length) {
    if (!client.socket.write(piece)) {
      await within(new Promise((resolve) => client.socket.once('drain', resolve)), 10_000, 'drain');
    }
  }
  t.strictSame((await readSimpleReply(client, 20_000)).bytes, hex`67446698 00000016 0000000000000009`);
  await readBack(t, client, 0, 64, f.base.bytes.subarray(0, 64));
  t.strictSame(overlays(f.overlayDir), [], 'nothing was written');
});

t.test('READ of more than 64 MiB: EINVAL, connection alive', async (t) => {
  const f = await start(t);
  const { client } = await f.connect();
  client.write(requestBytes({ type: CMD.READ, cookie: 4n, length: 64 * 1024 * 1024 + 1 }));
  t.strictSame((await readSimpleReply(client)).bytes, hex`67446698 00000016 0000000000000004`);
  await readBack(t, client, 0, 4, f.base.bytes.subarray(0, 4));
});

t.test('read-only server: EPERM for writes, payload consumed', async (t) => {
  const f = await start(t, { readOnly: true });
  const { client, flags } = await f.connect();
  t.equal(flags & 0x0002, 0x0002, 'READ_ONLY flag');
  t.equal(flags & 0x0060, 0, 'no TRIM or WRITE_ZEROES');
  client.write(requestBytes({ type: CMD.WRITE, cookie: 1n, offset: 0, length: 8 }), Buffer.alloc(8, 0xff));
  t.strictSame((await readSimpleReply(client)).bytes, hex`67446698 00000001 0000000000000001`);
  client.write(requestBytes({ type: CMD.TRIM, cookie: 2n, offset: 0, length: 512 }));
  t.equal((await readSimpleReply(client)).error, EPERM, 'TRIM');
  client.write(requestBytes({ type: CMD.WRITE_ZEROES, cookie: 3n, offset: 0, length: 512 }));
  t.equal((await readSimpleReply(client)).error, EPERM, 'WRITE_ZEROES');
  await readBack(t, client, 0, 8, f.base.bytes.subarray(0, 8));
  client.write(requestBytes({ type: CMD.FLUSH, cookie: 4n }));
  t.equal((await readSimpleReply(client)).error, 0, 'FLUSH is fine');
  t.strictSame(overlays(f.overlayDir), []);
});

t.test('structured replies: READ gets OFFSET_DATA chunks, errors get ERROR chunks', async (t) => {
  const f = await start(t);
  const { client, flags } = await f.connect({ structured: true });
  t.equal(flags & 0x0080, 0x0080, 'DF advertised');
  client.write(requestBytes({ type: CMD.READ, cookie: 0x10n, offset: 4096, length: 100 }));
  const data = await readChunk(client);
  t.strictSame(data.bytes.subarray(0, 28), hex`668e33ef 0001 0001 0000000000000010 0000006c 0000000000001000`);
  t.strictSame(data.payload.subarray(8), f.base.bytes.subarray(4096, 4196));

  client.write(requestBytes({ type: CMD.READ, cookie: 0x11n, offset: SIZE, length: 1 }));
  const err = await readChunk(client);
  t.equal(err.type, 0x8001, 'READ past end: ERROR chunk, not a simple reply');
  t.equal(err.flags, 1, 'DONE');
  t.equal(err.cookie, 0x11n);
  t.equal(err.payload.readUInt32BE(0), EINVAL);
  t.equal(err.payload.readUInt16BE(4), err.payload.length - 6, 'message length');

  client.write(requestBytes({ type: CMD.WRITE, cookie: 0x12n, offset: 0, length: 4 }), hex`01020304`);
  const ok = await readChunk(client);
  t.strictSame(ok.bytes, hex`668e33ef 0001 0000 0000000000000012 00000000`, 'success without data: NONE chunk');

  client.write(requestBytes({ type: CMD.READ, flags: 0x04, cookie: 0x13n, offset: 0, length: 8 }));
  const df = await readChunk(client);
  t.equal(df.type, 1, 'DF read: one OFFSET_DATA chunk');
  t.strictSame(df.payload.subarray(8), Buffer.concat([hex`01020304`, f.base.bytes.subarray(4, 8)]));
});

t.test('simple replies: DF is refused without structured replies', async (t) => {
  const f = await start(t);
  const { client } = await f.connect();
  client.write(requestBytes({ type: CMD.READ, flags: 0x04, cookie: 1n, length: 8 }));
  t.strictSame((await readSimpleReply(client)).bytes, hex`67446698 00000016 0000000000000001`);
  await readBack(t, client, 0, 8, f.base.bytes.subarray(0, 8));
});

t.test('64 pipelined requests are answered with matching cookies', async (t) => {
  const f = await start(t);
  const { client } = await f.connect();
  const expected = new Map<bigint, { offset: number; length: number }>();
  const batch: Buffer[] = [];
  for (let i = 0; i < 64; i++) {
    const cookie = (i % 2 === 0 ? 0x8000000000000000n : 0x7f00000000000000n) | (BigInt(i) << 32n) | BigInt(0xffff - i);
    const offset = (i * 997) % (SIZE - 600);
    const length = 1 + ((i * 131) % 512);
    expected.set(cookie, { offset, length });
    batch.push(requestBytes({ type: CMD.READ, cookie, offset, length }));
  }
  client.write(Buffer.concat(batch));
  const seen = new Set<bigint>();
  for (let i = 0; i < 64; i++) {
    const reply = await readSimpleReply(client);
    const want = expected.get(reply.cookie);
    if (want === undefined || seen.has(reply.cookie) || reply.error !== 0) {
      t.fail(`unexpected reply ${reply.bytes.toString('hex')}`);
      return;
    }
    seen.add(reply.cookie);
    const data = await client.read(want.length);
    if (!data.equals(f.base.bytes.subarray(want.offset, want.offset + want.length))) {
      t.fail(`wrong data for cookie ${reply.cookie.toString(16)}`);
      return;
    }
  }
  t.equal(seen.size, 64, 'every cookie answered once, unchanged');
  t.ok(
    [...seen].some((c) => c >= 0x8000000000000000n),
    'high-bit cookies among them',
  );
});

t.test('writes land in the overlay; the base file never changes', async (t) => {
  const f = await start(t);
  const { client } = await f.connect();
  const payload = Buffer.alloc(5000, 0xab);
  client.write(requestBytes({ type: CMD.WRITE, cookie: 1n, offset: 3000, length: payload.length }), payload);
  t.equal((await readSimpleReply(client)).error, 0);
  await readBack(
    t,
    client,
    2990,
    5020,
    Buffer.concat([f.base.bytes.subarray(2990, 3000), payload, f.base.bytes.subarray(8000, 8010)]),
  );
  client.write(requestBytes({ type: CMD.WRITE_ZEROES, cookie: 2n, offset: 0, length: 100 }));
  t.equal((await readSimpleReply(client)).error, 0);
  client.write(requestBytes({ type: CMD.TRIM, cookie: 3n, offset: 8192, length: 4096 }));
  t.equal((await readSimpleReply(client)).error, 0);
  client.write(requestBytes({ type: CMD.FLUSH, cookie: 4n }));
  t.equal((await readSimpleReply(client)).error, 0);
  await readBack(t, client, 0, 100, Buffer.alloc(100));
  t.strictSame(readFileSync(f.base.path), f.base.bytes, 'base untouched');

  const other = await f.connect();
  await readBack(t, other.client, 2990, 5020, f.base.bytes.subarray(2990, 8010), 9n);
});

t.test('the overlay file appears at the first write and is gone after the connection closes', async (t) => {
  const f = await start(t);
  const { client } = await f.connect();
  await readBack(t, client, 0, 16, f.base.bytes.subarray(0, 16));
  t.strictSame(overlays(f.overlayDir), [], 'no overlay after GO and a READ');
  client.write(requestBytes({ type: CMD.WRITE, cookie: 1n, offset: 0, length: 1 }), hex`00`);
  t.equal((await readSimpleReply(client)).error, 0);
  const files = overlays(f.overlayDir);
  t.equal(files.length, 1, 'one overlay after the first write');
  t.match(files[0], /^eph-\d+-\d+\.cow$/);
  client.write(requestBytes({ type: CMD.DISC }));
  t.ok(await client.closed(), 'DISC closes');
  await waitFor(() => overlays(f.overlayDir).length === 0, 'overlay deleted');
  await waitFor(() => f.server.connectionCount === 0, 'connection forgotten');
  t.pass('overlay deleted after close');
});

t.test('a client that drops the connection also loses its overlay', async (t) => {
  const f = await start(t);
  const { client } = await f.connect();
  client.write(requestBytes({ type: CMD.WRITE, cookie: 1n, offset: 0, length: 4 }), hex`01020304`);
  t.equal((await readSimpleReply(client)).error, 0);
  t.equal(overlays(f.overlayDir).length, 1);
  client.write(requestBytes({ type: CMD.WRITE, cookie: 2n, offset: 512, length: 4096 }), Buffer.alloc(4096, 1));
  client.destroy();
  await waitFor(() => overlays(f.overlayDir).length === 0, 'overlay deleted');
  await waitFor(() => f.server.connectionCount === 0, 'connection forgotten');
  t.pass('cleaned up');
});

t.test('DISC with requests in flight: every reply arrives before the close', async (t) => {
  const f = await start(t);
  const { client } = await f.connect();
  const batch: Buffer[] = [];
  for (let i = 0; i < 16; i++) batch.push(requestBytes({ type: CMD.READ, cookie: BigInt(i), offset: i * 4096, length: 4096 }));
  batch.push(requestBytes({ type: CMD.DISC, cookie: 99n }));
  client.write(Buffer.concat(batch));
  const all = await client.readToEnd();
  t.equal(all.length, 16 * (16 + 4096), 'sixteen replies with data, nothing for DISC');
  const cookies = new Set<bigint>();
  for (let at = 0; at < all.length; at += 16 + 4096) {
    const cookie = all.readBigUInt64BE(at + 8);
    cookies.add(cookie);
    t.equal(all.readUInt32BE(at), 0x67446698);
    t.strictSame(all.subarray(at + 16, at + 16 + 4096), f.base.bytes.subarray(Number(cookie) * 4096, Number(cookie + 1n) * 4096));
  }
  t.equal(cookies.size, 16);
});

t.test('BLOCK_STATUS over the wire after SET_META_CONTEXT', async (t) => {
  const f = await start(t);
  const { client, contextIds } = await f.connect({
    structured: true,
    metaContexts: ['base:allocation', 'qemu:allocation-depth'],
  });
  const depthId = contextIds.get('qemu:allocation-depth');
  const allocId = contextIds.get('base:allocation');
  t.ok(depthId !== undefined && allocId !== undefined && depthId !== allocId, 'two distinct ids');
  client.write(requestBytes({ type: CMD.WRITE, cookie: 1n, offset: 0, length: 4096 }), Buffer.alloc(4096, 7));
  t.equal((await readChunk(client)).type, 0);
  client.write(requestBytes({ type: CMD.WRITE_ZEROES, cookie: 2n, offset: 8192, length: 4096 }));
  t.equal((await readChunk(client)).type, 0);
  client.write(requestBytes({ type: CMD.BLOCK_STATUS, cookie: 3n, offset: 0, length: SIZE }));
  const chunks = [await readChunk(client), await readChunk(client)];
  t.strictSame(
    chunks.map((c) => c.flags),
    [0, 1],
    'DONE only on the last chunk',
  );
  const byId = new Map(chunks.map((c) => [c.payload.readUInt32BE(0), c]));
  const descriptors = (id: number | undefined): [number, number][] => {
    const payload = byId.get(id ?? -1)?.payload ?? Buffer.alloc(4);
    const out: [number, number][] = [];
    for (let at = 4; at < payload.length; at += 8) out.push([payload.readUInt32BE(at), payload.readUInt32BE(at + 4)]);
    return out;
  };
  t.strictSame(descriptors(depthId), [
    [4096, 1],
    [4096, 2],
    [4096, 1],
    [SIZE - 12288, 2],
  ]);
  // Neighbours with the same status merge: overlay data and base are both "data" (0).
  t.strictSame(descriptors(allocId), [
    [8192, 0],
    [4096, 3],
    [SIZE - 12288, 0],
  ]);
  client.write(requestBytes({ type: CMD.BLOCK_STATUS, flags: 0x08, cookie: 4n, offset: 100, length: SIZE - 100 }));
  const one = [await readChunk(client), await readChunk(client)];
  for (const c of one) t.equal(c.payload.length, 12, 'REQ_ONE: one descriptor');
  t.ok(
    one.every((c) => c.payload.readUInt32BE(4) === 3996),
    'up to the end of the first block',
  );
});

async function checkEmptyBlockStatus(t: Test, offsets: readonly number[]): Promise<void> {
  const f = await start(t);
  const { client } = await f.connect({ structured: true, metaContexts: ['base:allocation'] });
  for (const [i, offset] of offsets.entries()) {
    const cookie = BigInt(i + 1);
    client.write(requestBytes({ type: CMD.BLOCK_STATUS, cookie, offset, length: 0 }));
    const chunk = await readChunk(client);
    t.equal(chunk.cookie, cookie);
    if (chunk.type === 5) {
      for (let at = 4; at < chunk.payload.length; at += 8) {
        t.ok(chunk.payload.readUInt32BE(at) > 0, `offset ${offset}: descriptor length > 0`);
      }
    } else {
      t.equal(chunk.type, 0x8001, `offset ${offset}: or an error chunk`);
    }
  }
}

// qemu's client treats a zero-length status descriptor as a protocol error and disconnects.
t.test('BLOCK_STATUS of length 0 inside the export describes at least one byte', (t) => checkEmptyBlockStatus(t, [0, SIZE - 1]));

t.test('BLOCK_STATUS of length 0 at the end of the export sends no zero-length descriptor', (t) =>
  checkEmptyBlockStatus(t, [SIZE]),
);

t.test('BLOCK_STATUS without a negotiated context: EINVAL, connection alive', async (t) => {
  const f = await start(t);
  const { client } = await f.connect({ structured: true });
  client.write(requestBytes({ type: CMD.BLOCK_STATUS, cookie: 1n, length: 512 }));
  const err = await readChunk(client);
  t.equal(err.type, 0x8001);
  t.equal(err.payload.readUInt32BE(0), EINVAL);
  client.write(requestBytes({ type: CMD.READ, cookie: 2n, length: 4 }));
  t.strictSame((await readChunk(client)).payload.subarray(8), f.base.bytes.subarray(0, 4));
});

t.test('server.stop() with a connection open: replies delivered, overlay deleted, promise resolves', async (t) => {
  const { server, overlayDir, connect } = await start(t);
  const { client } = await connect();
  client.write(requestBytes({ type: CMD.WRITE, cookie: 1n, offset: 0, length: 4 }), hex`01020304`);
  t.equal((await readSimpleReply(client)).error, 0);
  t.equal(overlays(overlayDir).length, 1);
  // A READ sent just before stop(): if the server took it, its whole reply arrives.
  client.write(requestBytes({ type: CMD.READ, cookie: 2n, offset: 0, length: 4096 }));
  await within(server.stop(), 10_000, 'server.stop()');
  const rest = await client.readToEnd();
  t.ok(rest.length === 0 || rest.length === 16 + 4096, `no partial reply (${rest.length} bytes)`);
  if (rest.length > 0) {
    t.strictSame(rest.subarray(0, 16), hex`67446698 00000000 0000000000000002`);
    t.strictSame(rest.subarray(16, 20), hex`01020304`);
  }
  t.strictSame(overlays(overlayDir), [], 'overlay deleted');
  t.equal(server.connectionCount, 0);
  t.equal(await within(server.stop(), 1000, 'second stop()'), undefined, 'stop() twice is fine');
  await t.rejects(RawClient.connect(server.address, { timeout: 2000 }), 'no longer listening');
});

t.test('a negotiating client is dropped by stop()', async (t) => {
  const { server, raw } = await start(t);
  const client = await raw();
  await greet(client);
  await within(server.stop(), 10_000, 'server.stop()');
  t.ok(await client.closed(), 'closed');
});
