// A connection moving to the worker that holds its named overlay (hand-over.ts), in one process:
// the "mover" listener's export answers GO with a HandOver, its handOver gives the socket and the
// replay straight to the "owner" listener (as the primary would pass them between processes),
// whose export opens the device. The client negotiates once and cannot tell.

import type { Socket } from 'node:net';
import t, { type Test } from 'tap';
import { createLogger } from '../../lib/log.js';
import { DEFAULT_LIMITS } from '../../lib/server/connection-limits.js';
import { type Export, singleExportRegistry } from '../../lib/server/exports.js';
import { HandOver, type Replay } from '../../lib/server/hand-over.js';
import { type ListenAddress, NbdListener } from '../../lib/server/listener.js';
import { MemoryBudget } from '../../lib/server/memory-budget.js';
import { NO_EVENTS, type ServerEvents } from '../../lib/server/server-events.js';
import { NO_TLS } from '../../lib/server/tls-credentials.js';
import { patternBuffer } from '../helpers/bases.js';
import { FakeDevice } from '../helpers/fake-device.js';
import { RawClient } from '../helpers/raw-nbd/client.js';
import { greet, negotiate } from '../helpers/raw-nbd/negotiate.js';
import { readChunk, readOptionReplies } from '../helpers/raw-nbd/replies.js';
import { infoRequestData, NBD_CMD_READ, NBD_OPT_GO, optionBytes, requestBytes } from '../helpers/raw-nbd/wire.js';
import { within } from '../helpers/wait.js';

const SIZE = 64 * 1024;
const OWNER_PID = 4242;
const ERR_UNSUP = 0x80000001;
const ERR_UNKNOWN = 0x80000006;
const REP_INFO = 3;
const ACK = 1;

interface Moves {
  readonly address: ListenAddress;
  /** Each hand-over the mover made: where to, with what. */
  readonly moves: { owner: number; replay: Replay }[];
  /** Options the owner reported as refused (a muted replay reports none). */
  readonly ownerRefusals: string[];
}

function fakeExport(openDevice: () => Promise<FakeDevice>): Export {
  return { name: 'fake', description: '', size: SIZE, readOnly: false, multiConn: true, preferredBlockSize: 4096, openDevice };
}

function listener(
  exp: Export,
  extra: { handOver?: (socket: Socket, replay: Replay, owner: number) => void; events?: ServerEvents },
) {
  return new NbdListener({
    registry: singleExportRegistry(exp),
    log: createLogger('silent'),
    limits: DEFAULT_LIMITS,
    budget: new MemoryBudget({ limit: 64 * 1024 * 1024, stallMs: DEFAULT_LIMITS.replyStallMs }),
    tls: NO_TLS,
    ...extra,
  });
}

async function start(t: Test): Promise<Moves> {
  const moves: Moves['moves'] = [];
  const ownerRefusals: string[] = [];
  const owner = listener(
    fakeExport(async () => new FakeDevice(SIZE, { data: patternBuffer(SIZE) })),
    { events: { ...NO_EVENTS, optionRefused: (_s, _option, _reply, message) => ownerRefusals.push(message) } },
  );
  const mover = listener(
    fakeExport(() => Promise.reject(new HandOver(OWNER_PID, `named overlay fake@x is in use by process ${OWNER_PID}`))),
    {
      handOver: (socket, replay, to) => {
        moves.push({ owner: to, replay });
        owner.adopt(socket, { kind: 'tcp', host: '127.0.0.1', port: 0 }, replay);
      },
    },
  );
  const address = await mover.listen({ kind: 'tcp', host: '127.0.0.1', port: 0 });
  t.teardown(() => within(Promise.all([mover.stop(), owner.stop()]), 10_000, 'stop'));
  return { address, moves, ownerRefusals };
}

t.test(
  'a GO answered by another listener: structured replies and meta contexts carry over, data comes from the owner',
  async (t) => {
    const { address, moves } = await start(t);
    const session = await negotiate(address, { structured: true, metaContexts: ['base:allocation'], exportName: 'fake' });
    t.teardown(() => session.client.destroy());
    t.equal(session.size, SIZE, 'the GO was answered (by the owner)');
    t.ok(session.contextIds.has('base:allocation'), 'the meta context was negotiated (with the mover)');
    t.equal(moves.length, 1);
    t.equal(moves[0]?.owner, OWNER_PID);
    t.equal(moves[0]?.replay.hops, 1, 'first move');
    t.equal(moves[0]?.replay.handshake.readUInt32BE(0), 3, 'the replay starts with the client flags');
    session.client.write(requestBytes({ type: NBD_CMD_READ, cookie: 7n, offset: 4096, length: 4096 }));
    const chunk = await readChunk(session.client);
    t.equal(chunk.cookie, 7n);
    t.same(
      chunk.payload.subarray(8),
      patternBuffer(SIZE).subarray(4096, 8192),
      'a structured READ reply with the owner device data',
    );
  },
);

t.test('options refused before the move are not answered or reported twice', async (t) => {
  const { address, ownerRefusals } = await start(t);
  const client = await RawClient.connect(address);
  t.teardown(() => client.destroy());
  await greet(client);
  client.write(optionBytes(99));
  const [unsup] = await readOptionReplies(client);
  t.equal(unsup?.replyType, ERR_UNSUP);
  client.write(optionBytes(NBD_OPT_GO, infoRequestData('fake')));
  const go = await readOptionReplies(client);
  t.same(
    go.map((r) => r.replyType),
    [REP_INFO, ACK],
    'the GO gets its INFO and ACK, and nothing else',
  );
  t.same(ownerRefusals, [], 'the owner muted the replayed refusal');
});

t.test('a handshake past MAX_REPLAY_BYTES is not kept: the GO is refused instead of moved', async (t) => {
  const { address, moves } = await start(t);
  const client = await RawClient.connect(address);
  t.teardown(() => client.destroy());
  await greet(client);
  for (let i = 0; i < 2; i++) {
    client.write(optionBytes(99, Buffer.alloc(40 * 1024)));
    await readOptionReplies(client);
  }
  client.write(optionBytes(NBD_OPT_GO, infoRequestData('fake')));
  const [refused] = await readOptionReplies(client);
  t.equal(refused?.replyType, ERR_UNKNOWN);
  t.match(refused?.payload.toString(), /in use by process 4242/);
  t.equal(moves.length, 0, 'no move');
});
