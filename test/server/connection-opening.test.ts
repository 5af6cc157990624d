// Connection's opening state: GO and EXPORT_NAME wait for the device open (negotiation.ts)
// with nothing parsed meanwhile. Opens here are held by the test, so bytes are provably
// pipelined behind an open, and the client provably leaves (or the server stops) during one.

import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { OptionError } from '../../lib/protocol/errors.js';
import type { NbdListener } from '../../lib/server/listener.js';
import { patternBuffer } from '../helpers/bases.js';
import { FakeDevice } from '../helpers/fake-device.js';
import { settle, startFakeListener } from '../helpers/fake-listener.js';
import { hex } from '../helpers/hex.js';
import { RawClient } from '../helpers/raw-nbd/client.js';
import { greet } from '../helpers/raw-nbd/negotiate.js';
import { readOptionReplies, readSimpleReply } from '../helpers/raw-nbd/replies.js';
import { infoRequestData, optionBytes, requestBytes } from '../helpers/raw-nbd/wire.js';
import { startFixture } from '../helpers/server-fixture.js';
import { waitFor, within } from '../helpers/wait.js';

const SIZE = 64 * 1024;
const CMD = { READ: 0, WRITE: 1, DISC: 2 } as const;
const OPT = { EXPORT_NAME: 1, GO: 7 } as const;
const ERR_UNKNOWN = 0x80000006;

interface HeldOpen {
  /** Hand the connection a device (pattern data unless given). */
  resolve(device?: FakeDevice): FakeDevice;
  reject(err: unknown): void;
}

interface Fixture {
  readonly listener: NbdListener;
  /** Opens started and not yet settled by the test, oldest first. */
  readonly opens: HeldOpen[];
  client(options?: { allowHalfOpen?: boolean }): Promise<RawClient>;
}

async function start(t: Test): Promise<Fixture> {
  const opens: HeldOpen[] = [];
  const { listener, track } = await startFakeListener(t, {
    size: SIZE,
    openDevice: () =>
      new Promise<FakeDevice>((resolve, reject) => {
        opens.push({
          resolve: (device = new FakeDevice(SIZE, { data: patternBuffer(SIZE) })) => {
            resolve(device);
            return device;
          },
          reject,
        });
      }),
    beforeStop: () => {
      for (const open of opens.splice(0)) open.reject(new Error('test over'));
    },
  });
  return {
    listener,
    opens,
    async client(options = {}) {
      const c = track(await RawClient.connect(listener.address, options));
      await greet(c);
      return c;
    },
  };
}

/** The open the server started, once it has. */
async function nextOpen(f: Fixture): Promise<HeldOpen> {
  await waitFor(() => f.opens.length > 0, 'the server to start opening the device');
  return f.opens.shift() as HeldOpen; // just checked: not empty
}

t.test('GO waits for the open: no reply before it, pipelined requests are served after it', async (t) => {
  const f = await start(t);
  const client = await f.client();
  client.write(
    optionBytes(OPT.GO, infoRequestData('fake')),
    requestBytes({ type: CMD.WRITE, cookie: 1n, offset: 0, length: 4 }),
    hex`01020304`,
    requestBytes({ type: CMD.READ, cookie: 2n, offset: 0, length: 8 }),
  );
  const open = await nextOpen(f);
  await settle();
  t.equal(client.buffered, 0, 'nothing sent while the device opens');
  const device = open.resolve();
  t.strictSame(
    (await readOptionReplies(client)).map((r) => r.replyType),
    [3, 1],
    'then INFO_EXPORT and ACK',
  );
  t.strictSame((await readSimpleReply(client)).bytes, hex`67446698 00000000 0000000000000001`, 'the queued WRITE');
  t.strictSame((await readSimpleReply(client)).cookie, 2n, 'the queued READ');
  t.strictSame(await client.read(8), Buffer.concat([hex`01020304`, patternBuffer(8).subarray(4)]), 'after the WRITE');
  t.strictSame(
    device.calls.map((c) => c.op),
    ['write', 'read'],
    'in order, on the opened device',
  );
});

t.test('a refused open: the GO gets only its error, then the pipelined GO is parsed and served', async (t) => {
  const f = await start(t);
  const client = await f.client();
  client.write(
    optionBytes(OPT.GO, infoRequestData('fake')),
    optionBytes(OPT.GO, infoRequestData('fake')),
    requestBytes({ type: CMD.READ, cookie: 3n, offset: 100, length: 4 }),
  );
  (await nextOpen(f)).reject(new OptionError(ERR_UNKNOWN, 'named overlay fake@x is in use by process 1'));
  const [refused] = await readOptionReplies(client);
  t.equal(refused?.replyType, ERR_UNKNOWN);
  t.equal(refused?.payload.toString(), 'named overlay fake@x is in use by process 1', 'with the message');
  const second = await nextOpen(f);
  await settle();
  t.equal(client.buffered, 0, 'the second GO waits for its own open');
  second.resolve();
  t.strictSame(
    (await readOptionReplies(client)).map((r) => r.replyType),
    [3, 1],
  );
  t.equal((await readSimpleReply(client)).cookie, 3n);
  t.strictSame(await client.read(4), patternBuffer(104).subarray(100));
});

t.test('EXPORT_NAME refused by the open closes without a byte', async (t) => {
  const f = await start(t);
  const client = await f.client();
  client.write(optionBytes(OPT.EXPORT_NAME, Buffer.from('fake')), requestBytes({ type: CMD.READ, cookie: 1n, length: 4 }));
  (await nextOpen(f)).reject(new OptionError(ERR_UNKNOWN, 'in use'));
  t.strictSame(await client.readToEnd(), Buffer.alloc(0));
});

t.test('an unexpected open failure closes the connection, the listener lives on', async (t) => {
  const f = await start(t);
  const client = await f.client();
  client.write(optionBytes(OPT.GO, infoRequestData('fake')));
  (await nextOpen(f)).reject(new Error('EIO'));
  t.strictSame(await client.readToEnd(), Buffer.alloc(0), 'closed without a reply');
  await waitFor(() => f.listener.connectionCount === 0, 'connection forgotten');
});

t.test('a client that leaves during the open: the late device is closed, then the connection is forgotten', async (t) => {
  const f = await start(t);
  for (const how of ['destroy', 'end'] as const) {
    const client = await f.client();
    client.write(optionBytes(OPT.GO, infoRequestData('fake')));
    const open = await nextOpen(f);
    if (how === 'destroy') client.destroy();
    else client.socket.end();
    await settle();
    t.equal(f.listener.connectionCount, 1, `${how}: the connection waits for its open`);
    const device = open.resolve();
    await waitFor(() => f.listener.connectionCount === 0, `${how}: connection forgotten`);
    t.ok(device.closed, `${how}: the device opened too late is closed`);
    t.strictSame(
      device.calls.map((c) => c.op),
      ['close'],
      `${how}: and never used`,
    );
  }
  const client = await f.client();
  client.write(optionBytes(OPT.GO, infoRequestData('fake')));
  const open = await nextOpen(f);
  client.destroy();
  open.reject(new OptionError(ERR_UNKNOWN, 'refused after the client left'));
  await waitFor(() => f.listener.connectionCount === 0, 'a refusal for a gone client: forgotten too');
});

t.test('a client that half-closes after pipelining GO and requests still gets every reply', async (t) => {
  const f = await start(t);
  const client = await f.client({ allowHalfOpen: true });
  client.socket.end(
    Buffer.concat([
      optionBytes(OPT.GO, infoRequestData('fake')),
      requestBytes({ type: CMD.READ, cookie: 9n, offset: 8, length: 8 }),
    ]),
  );
  const open = await nextOpen(f);
  await settle();
  const device = open.resolve();
  const all = await client.readToEnd();
  const go = hex`0003e889045565a9 00000007 00000001 00000000`; // the ACK ends the GO replies
  const ackAt = all.indexOf(go);
  t.ok(ackAt > 0, 'GO replies, then');
  t.strictSame(
    all.subarray(ackAt + go.length),
    Buffer.concat([hex`67446698 00000000 0000000000000009`, patternBuffer(16).subarray(8)]),
    'the READ reply, then the close',
  );
  await waitFor(() => device.closed, 'device closed');
});

t.test('stop() during an open waits for it and closes the device', async (t) => {
  const f = await start(t);
  const client = await f.client();
  client.write(optionBytes(OPT.GO, infoRequestData('fake')));
  const open = await nextOpen(f);
  let stopped = false;
  const stopping = f.listener.stop().then(() => (stopped = true));
  await settle();
  t.notOk(stopped, 'stop() waits for the open');
  const device = open.resolve();
  await within(stopping, 5000, 'stop()');
  t.ok(device.closed, 'the device is closed');
  t.ok(await client.closed(), 'the client is dropped');
});

t.test('named overlay: clients that vanish right after GO leave no lock and no open overlay', async (t) => {
  const f = await startFixture(t, SIZE);
  const locks = (): string[] => readdirSync(f.overlayDir).filter((n) => n.endsWith('.lock') || n.endsWith('.tmp'));
  for (let i = 0; i < 8; i++) {
    const client = await f.raw();
    await greet(client);
    client.write(optionBytes(OPT.GO, infoRequestData('base@gone')));
    if (i % 2 === 1) await new Promise((resolve) => setImmediate(resolve));
    client.destroy();
  }
  await waitFor(() => f.server.connectionCount === 0, 'every connection forgotten');
  t.same(locks(), [], 'no lock (nor temporary) file left');
  const { client } = await f.connect({ exportName: 'base@gone' });
  client.write(requestBytes({ type: CMD.WRITE, cookie: 1n, offset: 0, length: 4 }), hex`0a0b0c0d`);
  t.equal((await readSimpleReply(client)).error, 0, 'the overlay opens and works afterwards');
  t.ok(readdirSync(f.overlayDir).includes('named-base@gone.cow.lock'), 'locked while in use');
  client.write(requestBytes({ type: CMD.DISC, cookie: 2n }));
  t.ok(await client.closed(), 'DISC');
  await waitFor(() => locks().length === 0, 'the lock released at the last close');
  t.same(readdirSync(join(f.overlayDir)).sort(), ['named-base@gone.cow'], 'the kept overlay only');
});
