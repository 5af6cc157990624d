// NbdListener and Connection over loopback with an in-memory device whose calls can be held
// at a gate, so requests are provably in flight when DISC, a half-close, a drop or stop() comes.

import { spawnSync } from 'node:child_process';
import { existsSync, statSync, writeFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { createLogger } from '../../lib/log.js';
import { AccessList } from '../../lib/server/access-list.js';
import type { AdmissionPolicy } from '../../lib/server/admission.js';
import { type ConnectionLimits, DEFAULT_LIMITS } from '../../lib/server/connection-limits.js';
import { singleExportRegistry } from '../../lib/server/exports.js';
import { type ListenAddress, NbdListener } from '../../lib/server/listener.js';
import { MemoryBudget } from '../../lib/server/memory-budget.js';
import type { SocketPermissions } from '../../lib/server/socket-permissions.js';
import { NO_TLS } from '../../lib/server/tls-credentials.js';
import { patternBuffer } from '../helpers/bases.js';
import { FakeDevice } from '../helpers/fake-device.js';
import { createFakeListener, settle, startFakeListener } from '../helpers/fake-listener.js';
import { hex } from '../helpers/hex.js';
import { RawClient } from '../helpers/raw-nbd/client.js';
import { greet, type Negotiated, negotiate } from '../helpers/raw-nbd/negotiate.js';
import { readOptionReplies, readSimpleReply } from '../helpers/raw-nbd/replies.js';
import { infoRequestData, NBDMAGIC, optionBytes, requestBytes } from '../helpers/raw-nbd/wire.js';
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

// ---- Who may connect, how many at once, and the socket file's permissions.

/** A listener on the pattern device with an admission policy and socket permissions; its warnings go to `lines`. */
async function startGuarded(
  t: Test,
  address: ListenAddress,
  options: { admission?: AdmissionPolicy; socketPermissions?: SocketPermissions } = {},
): Promise<{ listener: NbdListener; lines: string[] }> {
  const lines: string[] = [];
  const listener = new NbdListener({
    registry: singleExportRegistry({
      name: 'fake',
      description: '',
      size: SIZE,
      readOnly: false,
      preferredBlockSize: 4096,
      openDevice: async () => new FakeDevice(SIZE, { data: patternBuffer(SIZE) }),
    }),
    log: createLogger('warn', (line) => lines.push(line.trimEnd())),
    limits: DEFAULT_LIMITS,
    budget: new MemoryBudget({ limit: 256 * 1024 * 1024, stallMs: DEFAULT_LIMITS.replyStallMs }),
    tls: NO_TLS,
    ...(options.admission !== undefined ? { admission: options.admission } : {}),
    ...(options.socketPermissions !== undefined ? { socketPermissions: options.socketPermissions } : {}),
  });
  await listener.listen(address);
  t.teardown(() => within(listener.stop(), 10_000, 'listener.stop()'));
  return { listener, lines };
}

/**
 * What a TCP client connecting to `listener` (from `localAddress`) meets first: `greeting` (the
 * 18-byte NBDMAGIC IHAVEOPT), or `closed without a byte`. The client then leaves.
 */
function firstContact(listener: NbdListener, options: { host?: string; localAddress?: string } = {}): Promise<string> {
  const address = listener.address;
  if (address.kind !== 'tcp') throw new Error('a TCP listener was expected');
  return new Promise((resolve, reject) => {
    const socket = connect({
      host: options.host ?? address.host,
      port: address.port,
      ...(options.localAddress !== undefined ? { localAddress: options.localAddress } : {}),
    });
    let received = Buffer.alloc(0);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no greeting and no close within 5 s (${received.length} bytes)`));
    }, 5000);
    const finish = (what: string): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(what);
    };
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      if (received.length >= 18)
        finish(received.readBigUInt64BE(0) === NBDMAGIC ? 'greeting' : `bytes ${received.toString('hex')}`);
    });
    socket.on('close', () => finish(received.length === 0 ? 'closed without a byte' : `closed after ${received.length} bytes`));
    // A reset is one way of being closed; 'close' follows.
    socket.on('error', () => undefined);
  });
}

/** Refusals in log lines: one per "refused a connection", N per "refused N more". */
function refusalsLogged(lines: readonly string[]): number {
  let total = 0;
  for (const line of lines) {
    const more = /refused (\d+) more connection/.exec(line);
    total += more !== null ? Number(more[1]) : line.includes('refused a connection from') ? 1 : 0;
  }
  return total;
}

async function canBindIpv6(): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = createServer();
    probe.once('error', () => resolve(false));
    probe.listen({ host: '::1', port: 0 }, () => probe.close(() => resolve(true)));
  });
}
const NO_IPV6 = (await canBindIpv6()) ? false : 'the IPv6 loopback (::1) is not available';

t.test('--allow 127.0.0.2/32: 127.0.0.1 is closed before the greeting, 127.0.0.2 is greeted', async (t) => {
  const { listener, lines } = await startGuarded(
    t,
    { kind: 'tcp', host: '127.0.0.1', port: 0 },
    {
      admission: { allow: new AccessList(['127.0.0.2/32']) },
    },
  );
  t.equal(await firstContact(listener), 'closed without a byte', 'from 127.0.0.1');
  t.equal(listener.connectionCount, 0, 'no connection was made for it');
  // 127.0.0.0/8 is all loopback on Linux: the client can bind any of it.
  t.equal(await firstContact(listener, { localAddress: '127.0.0.2' }), 'greeting', 'from 127.0.0.2');
  t.match(lines, [/^nbd-cow: warn: refused a connection from 127\.0\.0\.1:\d+: address not in the allow list$/]);
});

t.test('allow list over IPv6: ::1 allowed or refused; IPv4-mapped peers match IPv4 ranges', { skip: NO_IPV6 }, async (t) => {
  const v6 = await startGuarded(t, { kind: 'tcp', host: '::1', port: 0 }, { admission: { allow: new AccessList(['::1/128']) } });
  t.equal(await firstContact(v6.listener), 'greeting', '::1 in ::1/128');
  const v4Only = await startGuarded(
    t,
    { kind: 'tcp', host: '::1', port: 0 },
    {
      admission: { allow: new AccessList(['127.0.0.0/8']) },
    },
  );
  t.equal(await firstContact(v4Only.listener), 'closed without a byte', '::1 is not in 127.0.0.0/8');
  t.match(v4Only.lines, [/refused a connection from \[::1\]:\d+: address not in the allow list/]);

  // A dual-stack listener sees IPv4 clients as ::ffff:a.b.c.d.
  const dual = await startGuarded(
    t,
    { kind: 'tcp', host: '::', port: 0 },
    {
      admission: { allow: new AccessList(['127.0.0.2', '::1']) },
    },
  );
  t.equal(await firstContact(dual.listener, { host: '127.0.0.1', localAddress: '127.0.0.2' }), 'greeting', '::ffff:127.0.0.2');
  t.equal(await firstContact(dual.listener, { host: '127.0.0.1' }), 'closed without a byte', '::ffff:127.0.0.1');
  t.equal(await firstContact(dual.listener, { host: '::1' }), 'greeting', '::1');
  t.match(dual.lines, [/refused a connection from \[::ffff:127\.0\.0\.1\]:\d+/]);
});

t.test('connection cap: the N+1th is closed before the greeting; once one leaves, a new one gets in', async (t) => {
  const { listener, lines } = await startGuarded(
    t,
    { kind: 'tcp', host: '127.0.0.1', port: 0 },
    {
      admission: { maxConnections: 2 },
    },
  );
  const clients: RawClient[] = [];
  t.teardown(() => {
    for (const c of clients) c.destroy();
  });
  const open = async (): Promise<RawClient> => {
    const client = await RawClient.connect(listener.address);
    clients.push(client);
    return client;
  };
  const first = await open();
  await greet(first);
  await greet(await open());
  t.equal(listener.connectionCount, 2);

  const third = await open();
  t.ok(await third.closed(), 'the third is closed');
  t.equal(third.buffered, 0, 'without a byte');
  t.match(lines, [/^nbd-cow: warn: refused a connection from 127\.0\.0\.1:\d+: too many connections \(limit 2\)$/]);

  // A burst past the cap: every one refused, their log lines rate-limited (counted at stop).
  const burst = await Promise.all(Array.from({ length: 20 }, () => open()));
  for (const client of burst) t.ok(await client.closed(), 'burst connection closed');
  t.ok(
    burst.every((client) => client.buffered === 0),
    'no burst connection got a byte',
  );

  first.destroy();
  await waitFor(() => listener.connectionCount === 1, 'the first connection gone');
  const next = await open();
  await greet(next);
  t.equal(listener.connectionCount, 2, 'a new one got in');

  await within(listener.stop(), 10_000, 'stop');
  t.equal(refusalsLogged(lines), 21, 'every refusal counted in the log');
});

t.test('unix socket: the mode and group asked for; allow lists do not apply', async (t) => {
  const dir = shortDir(t);
  // Root may give any group; anyone may give a group of their own.
  const gid = process.getuid?.() === 0 ? 65534 : (process.getgid?.() ?? 0);
  const path = join(dir, 'modes.sock');
  const { listener } = await startGuarded(
    t,
    { kind: 'unix', path },
    {
      admission: { allow: new AccessList(['127.0.0.2']) },
      socketPermissions: { mode: 0o640, gid },
    },
  );
  t.equal((statSync(path).mode & 0o777).toString(8), '640');
  t.equal(statSync(path).gid, gid);
  const client = await RawClient.connect(listener.address);
  t.teardown(() => client.destroy());
  await greet(client);
  t.pass('a unix client is greeted although it is in no allow list');

  // Group alone: the mode stays what the umask gives a plain listener's socket.
  const plainPath = join(dir, 'plain.sock');
  await startGuarded(t, { kind: 'unix', path: plainPath });
  const groupOnly = join(dir, 'group.sock');
  await startGuarded(t, { kind: 'unix', path: groupOnly }, { socketPermissions: { gid } });
  t.equal((statSync(groupOnly).mode & 0o777).toString(8), (statSync(plainPath).mode & 0o777).toString(8));
  t.equal(statSync(groupOnly).gid, gid);
});
