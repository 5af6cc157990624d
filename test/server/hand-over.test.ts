// hand-over.ts: what moves between workers with a connection, and how its close reads.

import t from 'tap';
import { decodeReplay, encodeReplay, HandOver, handedOverReason, isHandedOver, MAX_HOPS } from '../../lib/server/hand-over.js';

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
  t.notOk(isHandedOver('client sent NBD_CMD_DISC'));
  const err = new HandOver(42, 'named overlay golden@vm is in use by process 42');
  t.equal(err.owner, 42);
  t.equal(err.name, 'HandOver');
  t.ok(MAX_HOPS >= 2, 'a connection may move again when the lock changed hands');
  t.end();
});
