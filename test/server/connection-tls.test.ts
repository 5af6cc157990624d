// NBD_OPT_STARTTLS on a real server (startServer) with Node's TLS client on the raw socket: the
// upgrade, negotiation starting over, and handshakes that go wrong costing only their connection.

import { readFileSync } from 'node:fs';
import type { ConnectionOptions } from 'node:tls';
import t, { type Test } from 'tap';
import type { ServerOptions } from '../../lib/index.js';
import { hex } from '../helpers/hex.js';
import { greet } from '../helpers/raw-nbd/negotiate.js';
import { readOptionReplies, readOptionReply, readSimpleReply } from '../helpers/raw-nbd/replies.js';
import { startTlsClient } from '../helpers/raw-nbd/starttls.js';
import { infoRequestData, optionBytes, requestBytes } from '../helpers/raw-nbd/wire.js';
import { type ServerFixture, startFixture } from '../helpers/server-fixture.js';
import { type ClientCertificates, tlsFixtures } from '../helpers/tls-fixtures.js';
import { waitFor } from '../helpers/wait.js';

const SIZE = 64 * 1024;
const OPT = { STARTTLS: 5, GO: 7, STRUCTURED_REPLY: 8 } as const;
const REP_ACK = 1;
const REP_INFO = 3;

function start(t: Test, options: Partial<ServerOptions>): Promise<ServerFixture> {
  return startFixture(t, SIZE, options);
}

function certificateOptions(client: ClientCertificates): ConnectionOptions {
  return {
    ca: readFileSync(client.ca),
    cert: readFileSync(client.cert),
    key: readFileSync(client.key),
    servername: 'localhost',
  };
}

/** GO on the default export over `client`; true when it entered transmission. */
async function go(client: Awaited<ReturnType<typeof startTlsClient>>['client'], name = ''): Promise<number[]> {
  client.write(optionBytes(OPT.GO, infoRequestData(name)));
  return (await readOptionReplies(client)).map((r) => r.replyType);
}

t.test('STARTTLS: the upgrade, then GO and a READ over TLS; negotiation starts over', async (t) => {
  const tls = await tlsFixtures();
  const f = await start(t, { tls: { mode: 'on', certificates: tls.serverDir } });
  // Structured replies before TLS are forgotten after it (proto.md: all state is reset).
  const plain = await f.raw();
  await greet(plain);
  plain.write(optionBytes(OPT.STRUCTURED_REPLY));
  t.equal((await readOptionReply(plain)).replyType, REP_ACK);
  plain.destroy();

  const { client, socket } = await startTlsClient(f.server.address, certificateOptions(tls.alice));
  t.match(socket.getProtocol(), /^TLSv1\.[23]$/);
  t.strictSame(await go(client), [REP_INFO, REP_ACK]);
  client.write(requestBytes({ type: 0, cookie: 7n, offset: 0, length: 16 }));
  t.strictSame((await readSimpleReply(client)).bytes, hex`67446698 00000000 0000000000000007`, 'a simple reply: not structured');
  t.strictSame(await client.read(16), f.base.bytes.subarray(0, 16));
  client.destroy();
});

t.test('--tls-verify-peer: a certificate from another CA completes no handshake; the CA’s does', async (t) => {
  const tls = await tlsFixtures();
  const f = await start(t, { tls: { mode: 'require', certificates: tls.serverDir, verifyPeer: true } });
  // OpenSSL and Node clients send their certificate whatever CAs the server names.
  const refused = await startTlsClient(f.server.address, certificateOptions(tls.stranger)).then(
    async ({ client }) => {
      // TLS 1.3: the client is done before the server has checked its certificate.
      client.write(optionBytes(OPT.GO, infoRequestData('')));
      return client.closed(5000);
    },
    () => true,
  );
  t.ok(refused, 'refused (handshake failed, or the connection closed right after it)');
  const noCert = await startTlsClient(f.server.address, { ca: readFileSync(tls.alice.ca), servername: 'localhost' }).then(
    ({ client }) => client.closed(5000),
    () => true,
  );
  t.ok(noCert, 'no certificate: refused');
  const { client } = await startTlsClient(f.server.address, certificateOptions(tls.alice));
  t.strictSame(await go(client), [REP_INFO, REP_ACK], 'alice is served');
  client.destroy();
});

t.test('a broken or stalled TLS handshake costs only that connection', async (t) => {
  const tls = await tlsFixtures();
  const f = await start(t, {
    tls: { mode: 'require', certificates: tls.serverDir },
    limits: { handshakeTimeoutMs: 500 },
  });
  const startTls = async (): Promise<Awaited<ReturnType<ServerFixture['raw']>>> => {
    const c = await f.raw();
    await greet(c);
    c.write(optionBytes(OPT.STARTTLS));
    t.equal((await readOptionReply(c)).replyType, REP_ACK);
    return c;
  };
  const garbage = await startTls();
  garbage.write(Buffer.alloc(64, 0x16));
  const stalled = await startTls();
  const early = await f.raw();
  await greet(early);
  // Bytes right behind STARTTLS, before its ACK: not a TLS client.
  early.write(optionBytes(OPT.STARTTLS), hex`16030100`);
  const { client } = await startTlsClient(f.server.address, certificateOptions(tls.alice));
  t.strictSame(await go(client), [REP_INFO, REP_ACK], 'a good client is served meanwhile');
  t.ok(await garbage.closed(5000), 'garbage instead of a ClientHello: closed');
  t.ok(await early.closed(5000), 'bytes before the ACK: closed');
  t.ok(await stalled.closed(5000), 'no ClientHello: closed at the handshake deadline');
  client.write(requestBytes({ type: 0, cookie: 1n, offset: 0, length: 8 }));
  t.equal((await readSimpleReply(client)).error, 0, 'the good client goes on');
  t.strictSame(await client.read(8), f.base.bytes.subarray(0, 8));
  client.destroy();
});

t.test('a client that hangs up after the STARTTLS ACK is dropped at once, not at the deadline', async (t) => {
  const tls = await tlsFixtures();
  const f = await start(t, { tls: { mode: 'on', certificates: tls.serverDir }, limits: { handshakeTimeoutMs: 60_000 } });
  const c = await f.raw();
  await greet(c);
  c.write(optionBytes(OPT.STARTTLS));
  t.equal((await readOptionReply(c)).replyType, REP_ACK);
  const half = await f.raw();
  await greet(half);
  half.write(optionBytes(OPT.STARTTLS));
  t.equal((await readOptionReply(half)).replyType, REP_ACK);
  half.write(hex`16030100 20`); // the start of a ClientHello
  c.socket.end();
  half.socket.end();
  await waitFor(() => f.server.connectionCount === 0, 'the server closed both connections', 5000);
  t.equal(f.server.connectionCount, 0);
});
