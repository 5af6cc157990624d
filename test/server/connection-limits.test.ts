// Limits that hold against hostile clients, on a real server (startServer) driven by raw
// clients: the handshake deadline, requests larger than the advertised 32 MiB maximum, and one
// memory budget shared by every connection, with clients that never read their replies.

import t, { type Test } from 'tap';
import type { ServerOptions } from '../../lib/index.js';
import { hex } from '../helpers/hex.js';
import { greet } from '../helpers/raw-nbd/negotiate.js';
import { readSimpleReply } from '../helpers/raw-nbd/replies.js';
import { infoRequestData, optionBytes, requestBytes } from '../helpers/raw-nbd/wire.js';
import { type ServerFixture, startFixture } from '../helpers/server-fixture.js';
import { waitFor, within } from '../helpers/wait.js';

const MiB = 1024 * 1024;
const READ = 0;
const WRITE = 1;

function start(t: Test, size: number, options: Partial<ServerOptions> = {}): Promise<ServerFixture> {
  return startFixture(t, size, options);
}

t.test('a client that does not finish the handshake in time is dropped; one that does is not', async (t) => {
  const f = await start(t, 64 * 1024, { limits: { handshakeTimeoutMs: 300 } });
  const silent = await f.raw();
  t.equal((await silent.read(18)).length, 18, 'greeting');
  const halfOption = await f.raw();
  await greet(halfOption);
  halfOption.write(optionBytes(7, infoRequestData('')).subarray(0, 10), Buffer.alloc(0));
  const served = await f.connect();
  t.ok(await silent.closed(5000), 'no client flags: closed');
  t.ok(await halfOption.closed(5000), 'half an option: closed');
  await new Promise((resolve) => setTimeout(resolve, 400));
  t.notOk(served.client.isClosed, 'in transmission: the deadline no longer applies');
  served.client.write(requestBytes({ type: READ, cookie: 1n, length: 16 }));
  t.equal((await readSimpleReply(served.client)).error, 0);
  t.equal((await served.client.read(16)).length, 16);
});

t.test('READ and WRITE of 48 MiB (above the advertised 32 MiB) are served', async (t) => {
  const size = 64 * MiB;
  const f = await start(t, size);
  const { client } = await f.connect();
  const length = 48 * MiB;
  client.write(requestBytes({ type: READ, cookie: 1n, offset: MiB, length }));
  t.strictSame((await readSimpleReply(client, 20_000)).bytes, hex`67446698 00000000 0000000000000001`);
  t.ok((await client.read(length, 20_000)).equals(f.base.bytes.subarray(MiB, MiB + length)), '48 MiB of base data');
  const data = Buffer.alloc(length, 0x5c);
  client.write(requestBytes({ type: WRITE, cookie: 2n, offset: 4 * MiB, length }), data);
  t.strictSame((await readSimpleReply(client, 20_000)).bytes, hex`67446698 00000000 0000000000000002`);
  client.write(requestBytes({ type: READ, cookie: 3n, offset: 4 * MiB - 1, length: length + 2 }));
  t.equal((await readSimpleReply(client, 20_000)).error, 0);
  const back = await client.read(length + 2, 20_000);
  t.equal(back[0], f.base.bytes[4 * MiB - 1], 'the byte before is the base');
  t.ok(back.subarray(1, length + 1).equals(data), 'the 48 MiB written');
  t.equal(back[length + 1], f.base.bytes[4 * MiB + length], 'the byte after is the base');
});

t.test('clients that never read their replies hold the memory budget only until someone needs it', async (t) => {
  const limit = 64 * MiB;
  const f = await start(t, 64 * MiB, { bufferMemory: limit, limits: { replyStallMs: 300 } });
  let most = 0;
  const sampler = setInterval(() => {
    most = Math.max(most, f.server.bufferedBytes);
  }, 5);
  t.teardown(() => clearInterval(sampler));
  /** A client that asks for 64 MiB and reads none of it. */
  const stopReading = async (): Promise<void> => {
    const { client } = await f.connect();
    client.socket.pause();
    for (let i = 0; i < 4; i++) {
      client.write(requestBytes({ type: READ, cookie: BigInt(i), offset: i * 16 * MiB, length: 16 * MiB }));
    }
  };
  await stopReading();
  await waitFor(() => f.server.bufferedBytes > 16 * MiB, 'the first one holds part of the budget', 20_000);
  await new Promise((resolve) => setTimeout(resolve, 900));
  t.equal(f.server.connectionCount, 1, 'while nobody else needs memory, a slow reader is left alone');

  // More of them than the budget and the kernel's socket buffers (tcp_rmem: up to 32 MiB per
  // connection here) can take: they wait for each other, and those stuck are dropped in turn.
  for (let h = 0; h < 3; h++) await stopReading();
  const good = await f.connect();
  good.client.write(requestBytes({ type: READ, cookie: 9n, offset: 0, length: 16 * MiB }));
  const reply = await within(readSimpleReply(good.client, 30_000), 30_000, 'the good client is served');
  t.equal(reply.error, 0, 'a client that reads is served');
  t.ok((await good.client.read(16 * MiB, 20_000)).equals(f.base.bytes.subarray(0, 16 * MiB)));
  t.ok(f.server.connectionCount < 5, `clients that stopped reading were dropped (${5 - f.server.connectionCount})`);
  t.notOk(good.client.isClosed, 'the good client is still connected');
  // Payloads are taken before they are made; reply headers (16 bytes) are counted as queued.
  t.ok(most <= limit + 4096, `the server never held more than the budget (most: ${most} bytes)`);
});

t.test('large WRITEs pipelined past the memory budget wait in line and land whole (read in place)', async (t) => {
  // Two 24 MiB payloads fit the 64 MiB budget, the third does not: it waits with the socket
  // paused, and once admitted its payload is taken partly from bytes already read and partly from
  // the socket, straight into its buffer.
  const f = await start(t, 128 * MiB, { bufferMemory: 64 * MiB });
  const { client } = await f.connect();
  const length = 24 * MiB;
  const writes = Array.from({ length: 4 }, (_, i) => Buffer.alloc(length, 0x30 + i));
  for (const [i, data] of writes.entries()) {
    client.write(requestBytes({ type: WRITE, cookie: BigInt(i + 1), offset: i * 25 * MiB + 512, length }), data);
  }
  for (let i = 0; i < writes.length; i++) t.equal((await readSimpleReply(client, 20_000)).error, 0, `WRITE ${i + 1}`);
  for (const [i, data] of writes.entries()) {
    client.write(requestBytes({ type: READ, cookie: 100n, offset: i * 25 * MiB + 512, length }));
    t.equal((await readSimpleReply(client, 20_000)).error, 0);
    t.ok((await client.read(length, 20_000)).equals(data), `the payload of WRITE ${i + 1} read back whole`);
  }
});
