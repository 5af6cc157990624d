// readInPlace on real loopback sockets: the bytes arrive in the buffers the caller hands out,
// in order, with pause() and resume() stopping and starting the reads; a TLS socket is left as
// it is.

import net from 'node:net';
import tls from 'node:tls';
import t, { type Test } from 'tap';
import { readInPlace, SCRATCH_BYTES, sharedReadBuffer } from '../../lib/server/read-in-place.js';

/** A connected pair on loopback: [server side (paused, unread), client side]. */
async function socketPair(t: Test): Promise<[net.Socket, net.Socket]> {
  const server = net.createServer({ pauseOnConnect: true });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const accepted = new Promise<net.Socket>((resolve) => server.once('connection', resolve));
  const port = (server.address() as net.AddressInfo).port;
  const client = net.connect(port, '127.0.0.1');
  const serverSide = await accepted;
  server.close();
  t.teardown(() => {
    client.destroy();
    serverSide.destroy();
  });
  return [serverSide, client];
}

t.test('reads land in the buffers handed out, in order; pause() stops them', async (t) => {
  const [socket, client] = await socketPair(t);
  const sent = Buffer.alloc(3 * 1024 * 1024);
  for (let i = 0; i < sent.length; i += 4) sent.writeUInt32BE(i, i);
  const target = Buffer.alloc(sent.length);
  let filled = 0;
  let reads = 0;
  let elsewhere = 0;
  const given: Buffer[] = [];
  const done = new Promise<void>((resolve) => {
    const ok = readInPlace(
      socket,
      () => {
        // The first half straight into the target; then the shared scratch, copied from.
        const next = filled < sent.length / 2 ? target.subarray(filled, sent.length / 2) : sharedReadBuffer();
        given.push(next);
        return next;
      },
      (nread, buffer) => {
        reads++;
        if (buffer !== given.at(-1)) elsewhere++;
        if (buffer !== sharedReadBuffer()) filled += nread;
        else {
          buffer.copy(target, filled, 0, nread);
          filled += nread;
        }
        if (filled === sent.length) resolve();
        return true;
      },
    );
    t.ok(ok, 'a plain socket reads in place');
  });
  socket.on('data', () => t.fail('no data events'));
  socket.resume();
  client.write(sent);
  await done;
  t.ok(target.equals(sent), `3 MiB arrived whole, in ${reads} reads`);
  t.equal(elsewhere, 0, 'each read was in the buffer handed out last');
  t.ok(
    given.every((b) => b.length <= SCRATCH_BYTES || b.buffer === target.buffer),
    'no read went past the buffer it was given',
  );

  // Paused: nothing is read until resume().
  socket.pause();
  let later = 0;
  filled = 0;
  target.fill(0);
  client.write(Buffer.from('after the pause'));
  await new Promise((resolve) => setTimeout(resolve, 100));
  later = reads;
  t.equal(filled, 0, 'nothing read while paused');
  const resumed = new Promise<void>((resolve) => {
    const check = setInterval(() => {
      if (reads > later) {
        clearInterval(check);
        resolve();
      }
    }, 10);
  });
  socket.resume();
  await resumed;
  t.equal(target.subarray(0, filled).toString(), 'after the pause', 'read once resumed');
});

t.test('the end of the stream still ends the socket', async (t) => {
  const [socket, client] = await socketPair(t);
  t.ok(
    readInPlace(socket, sharedReadBuffer, () => true),
    'switched',
  );
  const ended = new Promise<void>((resolve) => socket.once('end', resolve));
  socket.resume();
  client.end('bye');
  await ended;
  t.pass("'end' after the client's FIN");
});

t.test('a TLS socket is left as it is', async (t) => {
  const [socket] = await socketPair(t);
  const wrapped = new tls.TLSSocket(socket, { isServer: true });
  t.teardown(() => wrapped.destroy());
  t.equal(
    readInPlace(wrapped, sharedReadBuffer, () => true),
    false,
  );
});
