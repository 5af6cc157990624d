// NbdListener and Connection over loopback with an in-memory device whose calls can be held
// at a gate, so requests are provably in flight when DISC, a half-close, a drop or stop() comes.

import { spawnSync } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import type { ConnectionLimits } from '../../lib/server/connection.js';
import type { NbdListener } from '../../lib/server/listener.js';
import { patternBuffer } from '../helpers/bases.js';
import { FakeDevice } from '../helpers/fake-device.js';
import { createFakeListener, settle, startFakeListener } from '../helpers/fake-listener.js';
import { hex } from '../helpers/hex.js';
import { RawClient } from '../helpers/raw-nbd/client.js';
import { greet, type Negotiated, negotiate } from '../helpers/raw-nbd/negotiate.js';
import { readOptionReplies, readSimpleReply } from '../helpers/raw-nbd/replies.js';
import { infoRequestData, optionBytes, requestBytes } from '../helpers/raw-nbd/wire.js';
import { shortDir } from '../helpers/server-fixture.js';
import { waitFor, within } from '../helpers/wait.js';

const SIZE = 64 * 1024;
const CMD = { READ: 0, WRITE: 1, DISC: 2 } as const;

interface Fixture {
  readonly listener: NbdListener;
  /** Devices opened so far, one per GO. */
  readonly devices: FakeDevice[];
  connect(options?: { allowHalfOpen?: boolean }): Promise<Negotiated>;
}

async function start(
  t: Test,
  options: { limits?: Partial<ConnectionLimits>; openDevice?: () => FakeDevice } = {},
): Promise<Fixture> {
  const devices: FakeDevice[] = [];
  const { listener, track } = await startFakeListener(t, {
    size: SIZE,
    description: 'in memory',
    limits: options.limits,
    openDevice: async () => {
      const device = options.openDevice?.() ?? new FakeDevice(SIZE, { data: patternBuffer(SIZE) });
      devices.push(device);
      return device;
    },
    beforeStop: () => {
      for (const d of devices) d.release();
    },
  });
  return {
    listener,
    devices,
    async connect(opts = {}) {
      const n = await negotiate(listener.address, opts);
      track(n.client);
      return n;
    },
  };
}

function reads(count: number, length = 512): Buffer {
  const batch: Buffer[] = [];
  for (let i = 0; i < count; i++) batch.push(requestBytes({ type: CMD.READ, cookie: BigInt(i + 1), offset: i * length, length }));
  return Buffer.concat(batch);
}

/** Parse simple READ replies of `length` bytes each; returns the cookies in arrival order. */
function readReplies(t: Test, all: Buffer, length: number): bigint[] {
  const cookies: bigint[] = [];
  for (let at = 0; at + 16 <= all.length; at += 16 + length) {
    t.equal(all.readUInt32BE(at), 0x67446698, 'simple reply magic');
    t.equal(all.readUInt32BE(at + 4), 0, 'no error');
    const cookie = all.readBigUInt64BE(at + 8);
    const offset = Number(cookie - 1n) * length;
    t.strictSame(
      all.subarray(at + 16, at + 16 + length),
      patternBuffer(SIZE).subarray(offset, offset + length),
      `data for ${cookie}`,
    );
    cookies.push(cookie);
  }
  return cookies;
}

/** A listener on the pattern device that the test listens and stops itself. */
function plainListener(): NbdListener {
  return createFakeListener({ size: SIZE, openDevice: async () => new FakeDevice(SIZE, { data: patternBuffer(SIZE) }) });
}

t.test('address before listen() throws', async (t) => {
  const listener = plainListener();
  t.throws(() => listener.address, /not listening/);
  t.equal(listener.connectionCount, 0);
});

t.test('listening on a busy port fails with a readable error', async (t) => {
  const busy = createServer();
  await new Promise<void>((resolve) => busy.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => busy.close(() => resolve())));
  const address = busy.address();
  if (address === null || typeof address === 'string') {
    t.fail('no port');
    return;
  }
  const listener = plainListener();
  await t.rejects(listener.listen({ kind: 'tcp', host: '127.0.0.1', port: address.port }), {
    message: `cannot listen on 127.0.0.1:${address.port}: address already in use`,
    code: 'EADDRINUSE',
  });
});

t.test('unix socket: a stale socket file left by a dead server is replaced', async (t) => {
  const path = join(shortDir(t), 'nbd.sock');
  // A process that dies (SIGKILL) while listening leaves its socket file behind.
  spawnSync(
    process.execPath,
    ['-e', `require('net').createServer().listen(${JSON.stringify(path)}, () => process.kill(process.pid, 'SIGKILL'))`],
    {
      timeout: 10_000,
    },
  );
  t.ok(existsSync(path), 'stale socket file exists');
  const listener = plainListener();
  await listener.listen({ kind: 'unix', path });
  t.teardown(() => within(listener.stop(), 10_000, 'stop'));
  const { client } = await negotiate(listener.address);
  t.teardown(() => client.destroy());
  client.write(reads(1));
  t.equal((await readSimpleReply(client)).error, 0, 'serving on the replaced path');
});

t.test('unix socket: a live socket or a regular file is never replaced', async (t) => {
  const dir = shortDir(t);
  const live = join(dir, 'live.sock');
  const first = plainListener();
  await first.listen({ kind: 'unix', path: live });
  t.teardown(() => within(first.stop(), 10_000, 'stop'));
  await t.rejects(plainListener().listen({ kind: 'unix', path: live }), {
    message: `cannot listen on ${live}: address already in use`,
    code: 'EADDRINUSE',
  });
  const { client } = await negotiate(first.address);
  t.teardown(() => client.destroy());
  client.write(reads(1));
  t.equal((await readSimpleReply(client)).error, 0, 'the first server still answers');

  const file = join(dir, 'file.sock');
  writeFileSync(file, 'not a socket');
  await t.rejects(plainListener().listen({ kind: 'unix', path: file }), { code: 'EADDRINUSE' });
  t.ok(existsSync(file), 'the regular file is left alone');
});

t.test('DISC with requests in flight: replies first, then close, then the device closes', async (t) => {
  const f = await start(t);
  const { client } = await f.connect();
  const device = f.devices[0] as FakeDevice;
  device.hold();
  client.write(reads(4), requestBytes({ type: CMD.DISC }));
  await waitFor(() => device.pending === 4, 'four reads in flight');
  await settle();
  t.notOk(client.isClosed, 'still open while requests are in flight');
  t.notOk(device.closed, 'device still open');
  device.release();
  const all = await client.readToEnd();
  t.equal(all.length, 4 * (16 + 512));
  t.strictSame(readReplies(t, all, 512).sort(), [1n, 2n, 3n, 4n]);
  await waitFor(() => device.closed, 'device closed');
  t.equal(device.calls.at(-1)?.op, 'close', 'close comes after the reads');
});

t.test(
  'DISC then a half-close (FIN) with requests in flight: replies still delivered',
  // proto.md: on NBD_CMD_DISC the server MUST finish all outstanding requests. The client
  // half-closing its side after DISC (no more data) must not drop those replies.
  async (t) => {
    const f = await start(t);
    const { client } = await f.connect({ allowHalfOpen: true });
    const device = f.devices[0] as FakeDevice;
    device.hold();
    client.socket.end(Buffer.concat([reads(4), requestBytes({ type: CMD.DISC })]));
    await waitFor(() => device.pending === 4, 'four reads in flight');
    await settle();
    device.release();
    const all = await client.readToEnd();
    t.equal(all.length, 4 * (16 + 512), 'four replies');
  },
);

t.test('a dropped client: in-flight requests finish before the device closes', async (t) => {
  const f = await start(t);
  const { client } = await f.connect();
  const device = f.devices[0] as FakeDevice;
  device.hold();
  client.write(reads(2));
  await waitFor(() => device.pending === 2, 'two reads in flight');
  client.destroy();
  await waitFor(() => f.listener.connectionCount === 0 || device.pending === 2, 'drop noticed');
  await settle();
  t.notOk(device.closed, 'not closed under in-flight I/O');
  device.release();
  await waitFor(() => device.closed, 'device closed');
  await waitFor(() => f.listener.connectionCount === 0, 'connection forgotten');
  t.equal(device.calls.at(-1)?.op, 'close');
});

t.test('stop() with a request in flight: the reply is delivered, then everything closes', async (t) => {
  const f = await start(t);
  const { client } = await f.connect();
  const device = f.devices[0] as FakeDevice;
  device.hold();
  client.write(reads(1, 4096));
  await waitFor(() => device.pending === 1, 'read in flight');
  let stopped = false;
  const stopping = f.listener.stop().then(() => {
    stopped = true;
  });
  await settle();
  t.notOk(stopped, 'stop() waits for the in-flight request');
  t.notOk(client.isClosed);
  device.release();
  await within(stopping, 10_000, 'stop()');
  const all = await client.readToEnd();
  t.equal(all.length, 16 + 4096, 'the whole reply');
  readReplies(t, all, 4096);
  t.ok(device.closed, 'device closed before stop() resolved');
  t.equal(f.listener.connectionCount, 0);
  await t.rejects(RawClient.connect(f.listener.address, { timeout: 2000 }), 'no longer accepting');
});

t.test('at the in-flight cap, parsing waits; everything is answered after', async (t) => {
  const f = await start(t, { limits: { maxInFlight: 2 } });
  const { client } = await f.connect();
  const device = f.devices[0] as FakeDevice;
  device.hold();
  client.write(reads(6));
  await waitFor(() => device.pending === 2, 'two reads in flight');
  await settle();
  t.equal(device.calls.length, 2, 'no more than the cap reach the device');
  device.release();
  const cookies = new Set<bigint>();
  for (let i = 0; i < 6; i++) {
    const reply = await readSimpleReply(client);
    t.equal(reply.error, 0);
    cookies.add(reply.cookie);
    await client.read(512);
  }
  t.equal(cookies.size, 6);
});

t.test('device errors become errno replies and the connection lives', async (t) => {
  const f = await start(t);
  const { client } = await f.connect();
  const device = f.devices[0] as FakeDevice;
  device.failNext('write', Object.assign(new Error('disk full'), { code: 'ENOSPC' }));
  client.write(requestBytes({ type: CMD.WRITE, cookie: 1n, length: 4 }), hex`01020304`);
  t.strictSame((await readSimpleReply(client)).bytes, hex`67446698 0000001c 0000000000000001`);
  device.failNext('read', 'not even an Error');
  client.write(requestBytes({ type: CMD.READ, cookie: 2n, length: 4 }));
  t.strictSame((await readSimpleReply(client)).bytes, hex`67446698 00000005 0000000000000002`, 'EIO');
  client.write(requestBytes({ type: CMD.WRITE, cookie: 3n, length: 4 }), hex`01020304`);
  t.equal((await readSimpleReply(client)).error, 0);
  t.strictSame(device.data.subarray(0, 4), hex`01020304`);
});

t.test('a device that cannot open closes that connection only', async (t) => {
  let fail = true;
  const f = await start(t, {
    openDevice: () => {
      if (fail) {
        fail = false;
        throw Object.assign(new Error('no space for the overlay'), { code: 'ENOSPC' });
      }
      return new FakeDevice(SIZE, { data: patternBuffer(SIZE) });
    },
  });
  const bad = await RawClient.connect(f.listener.address);
  t.teardown(() => bad.destroy());
  await greet(bad);
  bad.write(optionBytes(7, infoRequestData('')));
  t.ok(await bad.closed(), 'closed');
  const { client } = await f.connect();
  client.write(reads(1));
  t.equal((await readSimpleReply(client)).error, 0, 'the next client is served');
});

t.test('random bytes into live connections: each closes or answers, the server survives', async (t) => {
  const f = await start(t);
  let a = 0x1234567;
  const rand = (n: number): number => {
    a = (Math.imul(a ^ (a >>> 15), 0x2c1b3c6d) + 0x6d2b79f5) >>> 0;
    return a % n;
  };
  const ROUNDS = 60;
  let closedByServer = 0;
  for (let round = 0; round < ROUNDS; round++) {
    const phase = round % 3;
    let client: RawClient;
    if (phase === 0) {
      client = await RawClient.connect(f.listener.address);
      await client.read(18);
    } else {
      client = (await f.connect()).client;
    }
    const parts: Buffer[] = [];
    for (let i = 0; i < 8; i++) {
      if (phase === 2 && rand(2) === 0) {
        // A well-framed header with random fields, so validation paths are hit too.
        parts.push(
          requestBytes({
            type: rand(10),
            flags: rand(0x20),
            cookie: BigInt(rand(1000)),
            offset: rand(SIZE * 2),
            length: rand(4096),
          }),
        );
      } else {
        const junk = Buffer.alloc(1 + rand(64));
        for (let j = 0; j < junk.length; j++) junk[j] = rand(256);
        parts.push(junk);
      }
    }
    client.socket.end(Buffer.concat(parts));
    // Our FIN makes the server close; a hang fails here.
    if (await client.closed(5000)) closedByServer++;
    else t.fail(`round ${round}: connection still open`);
    client.destroy();
  }
  t.equal(closedByServer, ROUNDS, 'every connection ended');
  await waitFor(() => f.listener.connectionCount === 0, 'all connections gone');
  t.ok(
    f.devices.every((device) => device.closed),
    'every device of a fuzzed connection closed',
  );
  const { client } = await f.connect();
  client.write(reads(1));
  t.equal((await readSimpleReply(client)).error, 0, 'still serving');
});

t.test('a GO reply followed by requests in the same packet', async (t) => {
  const f = await start(t);
  const client = await RawClient.connect(f.listener.address);
  t.teardown(() => client.destroy());
  await client.read(18);
  client.write(
    Buffer.concat([
      hex`00000003`,
      optionBytes(8),
      optionBytes(7, infoRequestData('fake')),
      requestBytes({ type: CMD.READ, cookie: 5n, length: 8 }),
    ]),
  );
  t.strictSame(
    (await readOptionReplies(client)).map((r) => r.replyType),
    [1],
  );
  t.strictSame(
    (await readOptionReplies(client)).map((r) => r.replyType),
    [3, 1],
  );
  const chunk = await client.read(20 + 8 + 8);
  t.strictSame(chunk.subarray(0, 28), hex`668e33ef 0001 0001 0000000000000005 00000010 0000000000000000`);
  t.strictSame(chunk.subarray(28), patternBuffer(8));
});

t.test('stop() finishes even when a client never reads its replies', async (t) => {
  const big = 32 * 1024 * 1024;
  const devices: FakeDevice[] = [];
  const { listener, track } = await startFakeListener(t, {
    size: big,
    openDevice: async () => {
      const device = new FakeDevice(big);
      devices.push(device);
      return device;
    },
  });
  const { client } = await negotiate(listener.address);
  track(client);
  client.socket.pause();
  client.write(
    requestBytes({ type: CMD.READ, cookie: 1n, length: big }),
    requestBytes({ type: CMD.READ, cookie: 2n, length: big }),
  );
  await waitFor(() => devices[0]?.calls.length === 2, 'both reads reached the device');
  await settle();
  const stopped = await within(listener.stop(), 5000, 'listener.stop()').then(
    () => true,
    () => false,
  );
  t.ok(stopped, 'stop() resolves although 64 MiB of replies cannot be delivered');
  t.ok(devices[0]?.closed, 'device closed');
  client.destroy();
  await within(listener.stop(), 10_000, 'listener.stop() after the client left');
});
