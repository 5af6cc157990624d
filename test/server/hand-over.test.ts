// hand-over.ts: what moves between workers with a connection, and how its close reads.

import t from 'tap';
import {
  decodeRelayHeader,
  decodeReplay,
  encodeRelayHeader,
  encodeReplay,
  HandOver,
  handedOverReason,
  isHandedOver,
  MAX_HOPS,
  MAX_RELAY_HEADER_BYTES,
} from '../../lib/server/hand-over.js';

t.test('a replay crosses the IPC channel unchanged', (t) => {
  const replay = { handshake: Buffer.from([0, 0, 0, 3, 1, 2]), pending: Buffer.alloc(300, 7), hops: 2 };
  const message = encodeReplay(replay);
  t.same(JSON.parse(JSON.stringify(message)), message, 'plain JSON');
  const back = decodeReplay(JSON.parse(JSON.stringify(message)));
  t.ok(back.handshake.equals(replay.handshake));
  t.ok(back.pending.equals(replay.pending));
  t.equal(back.hops, 2);
  t.end();
});

t.test('a malformed replay is a clear error', (t) => {
  for (const bad of [
    null,
    'x',
    {},
    { handshake: 'AA==', pending: 'AA==' },
    { handshake: 1, pending: 'AA==', hops: 1 },
    { handshake: 'AA==', pending: 'AA==', hops: 0 },
    { handshake: 'AA==', pending: 'AA==', hops: 1.5 },
  ]) {
    t.throws(() => decodeReplay(bad), /a handed-over connection came without its handshake/, JSON.stringify(bad));
  }
  t.end();
});

t.test('the close reason of a moved connection says where it went, and is told apart', (t) => {
  t.equal(handedOverReason(42), 'handed over to worker 42, which has the named overlay open');
  t.ok(isHandedOver(handedOverReason(42)));
  t.ok(isHandedOver(handedOverReason(42, true)), 'a relay too');
  t.match(handedOverReason(42, true), /^relayed to worker 42, .*TLS session stays here/);
  t.notOk(isHandedOver('client sent NBD_CMD_DISC'));
  const err = new HandOver(42, 'named overlay golden@vm is in use by process 42');
  t.equal(err.owner, 42);
  t.equal(err.name, 'HandOver');
  t.ok(MAX_HOPS >= 2, 'a connection may move again when the lock changed hands');
  t.end();
});

t.test('a relay header carries the replay and the TLS state, and is read only whole', (t) => {
  const replay = {
    handshake: Buffer.from('options after STARTTLS'),
    pending: Buffer.from('GO'),
    hops: 1,
    tls: { peer: '10.0.0.5:4000', peerAddress: '10.0.0.5', identity: 'alice', noZeroes: true, protocol: 'TLSv1.3', cipher: 'X' },
  };
  const header = encodeRelayHeader(replay);
  const withClientBytes = Buffer.concat([header, Buffer.from('next request')]);
  t.equal(decodeRelayHeader(withClientBytes.subarray(0, 3)), null, 'not even the length yet');
  t.equal(decodeRelayHeader(header.subarray(0, header.length - 1)), null, 'not all of it yet');
  const read = decodeRelayHeader(withClientBytes);
  t.equal(read?.used, header.length, 'the client bytes after it are left');
  t.same(read?.replay.tls, replay.tls);
  t.ok(read?.replay.handshake.equals(replay.handshake));
  const anonymous = decodeRelayHeader(
    encodeRelayHeader({ ...replay, tls: { ...replay.tls, identity: undefined, peerAddress: undefined } }),
  );
  t.equal(anonymous?.replay.tls?.identity, undefined, 'no identity (a certificate without one)');
  const huge = Buffer.alloc(8);
  huge.writeUInt32BE(MAX_RELAY_HEADER_BYTES + 1, 0);
  t.throws(() => decodeRelayHeader(huge), /a relay header of \d+ bytes/);
  const bad = Buffer.from(JSON.stringify({ handshake: '', pending: '', hops: 1, tls: { noZeroes: 'yes' } }));
  const length = Buffer.alloc(4);
  length.writeUInt32BE(bad.length, 0);
  t.throws(() => decodeRelayHeader(Buffer.concat([length, bad])), /without its TLS state/);
  t.end();
});
