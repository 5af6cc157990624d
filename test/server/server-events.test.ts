// The events a server reports (server-events.ts), from a real server driven by a raw client:
// what each carries, in order, and the session list while the connection is open.

import t from 'tap';
import { combineEvents, type ServerEvents, type SessionRecord } from '../../lib/server/server-events.js';
import { readOptionReply, readSimpleReply } from '../helpers/raw-nbd/replies.js';
import { requestBytes } from '../helpers/raw-nbd/wire.js';
import { startFixture } from '../helpers/server-fixture.js';
import { waitFor } from '../helpers/wait.js';

const SIZE = 1024 * 1024;
const READ = 0;
const WRITE = 1;

/** An observer that writes each event as one line. */
function recorder(): { events: ServerEvents; lines: string[] } {
  const lines: string[] = [];
  const where = (s: SessionRecord): string => `#${s.id} ${s.exportName ?? '-'}`;
  return {
    lines,
    events: {
      connectionOpened: (s) => lines.push(`opened ${where(s)} ${s.peer}`),
      connectionRefused: (peer, reason) => lines.push(`refused ${peer} ${reason}`),
      optionRefused: (s, option, replyType, message) =>
        lines.push(`option ${where(s)} ${option} 0x${replyType.toString(16)} ${message}`),
      tlsEstablished: (s) => lines.push(`tls ${where(s)}`),
      exportChosen: (s) =>
        lines.push(`export ${where(s)} ${s.overlay} structured=${s.structuredReplies} ${s.metaContexts.join(',')}`),
      requestDone: (s, command, errno, bytes) => lines.push(`request ${where(s)} ${command} errno=${errno} bytes=${bytes}`),
      connectionClosed: (s, reason) =>
        lines.push(`closed ${where(s)} requests=${s.requests} read=${s.bytesRead} written=${s.bytesWritten} (${reason})`),
      copiedUp: (path, block, from) => lines.push(`copy-up ${path.split('/').at(-1)} ${block} from ${from}`),
      zeroed: (path, first, count) => lines.push(`zeroed ${path.split('/').at(-1)} ${first}+${count}`),
      elided: (path, first, count, to) => lines.push(`elided ${path.split('/').at(-1)} ${first}+${count} to ${to}`),
    },
  };
}

t.test('a connection reports its life: opened, export, each request with its result, closed', async (t) => {
  const { events, lines } = recorder();
  const f = await startFixture(t, SIZE, { events: [events], exportName: 'golden' });
  const { client } = await f.connect({ exportName: 'golden@x', structured: true, metaContexts: ['base:allocation'] });
  client.write(requestBytes({ type: READ, cookie: 1n, length: 4096 }));
  await client.read(20 + 4096); // one OFFSET_DATA chunk: header, offset, data
  client.write(requestBytes({ type: WRITE, cookie: 2n, offset: 0, length: 512 }), Buffer.alloc(512, 1));
  await client.read(20);
  client.write(requestBytes({ type: READ, cookie: 3n, offset: SIZE, length: 1 })); // past the end: EINVAL
  await client.read(20 + 4 + 2 + 40);

  const [session] = f.server.sessions();
  t.equal(f.server.sessions().length, 1, 'the session list holds the connection');
  t.match(session, {
    exportName: 'golden@x',
    overlay: 'named',
    structuredReplies: true,
    requests: 3,
    bytesRead: 4096,
    bytesWritten: 512,
  });
  t.equal(session?.overlayBytes(), 4096, 'one 4 KiB block of overlay data');

  client.destroy();
  await waitFor(() => lines.some((l) => l.startsWith('closed')), 'the close event');
  t.strictSame(lines.slice(1), [
    'export #1 golden@x named structured=true base:allocation',
    'request #1 golden@x 0 errno=0 bytes=4096',
    'copy-up named-golden@x.cow 0 from base',
    'request #1 golden@x 1 errno=0 bytes=512',
    'request #1 golden@x 0 errno=22 bytes=0',
    'closed #1 golden@x requests=3 read=4096 written=512 (client closed the connection)',
  ]);
  t.match(lines[0], /^opened #1 - 127\.0\.0\.1:\d+$/);
});

t.test('refused options and connections are reported', async (t) => {
  const { events, lines } = recorder();
  const f = await startFixture(t, SIZE, { events: [events], maxConnections: 1 });
  const first = await f.raw();
  await first.read(18);
  const second = await f.raw();
  t.ok(await second.closed(5000), 'the second connection is refused');
  first.write(Buffer.from('00000003', 'hex'));
  first.write(Buffer.from('49484156454f5054 00000005 00000000'.replace(/ /g, ''), 'hex')); // STARTTLS, TLS off
  t.equal((await readOptionReply(first)).replyType, 0x80000002);
  t.match(lines, [
    /^opened #1/,
    /^refused 127\.0\.0\.1:\d+ max-connections$/,
    'option #1 - 5 0x80000002 TLS is not enabled on this server',
  ]);
});

t.test('combineEvents reports to every observer in order', async (t) => {
  const a = recorder();
  const b = recorder();
  const both = combineEvents([a.events, b.events]);
  both.connectionRefused('x', 'allow-list');
  t.strictSame(a.lines, ['refused x allow-list']);
  t.strictSame(b.lines, ['refused x allow-list']);
  t.equal(combineEvents([a.events]), a.events, 'one observer is used as it is');
});

t.test('a request that fails is counted with its errno and no bytes', async (t) => {
  const { events, lines } = recorder();
  const f = await startFixture(t, SIZE, { events: [events], readOnly: true });
  const { client } = await f.connect();
  client.write(requestBytes({ type: WRITE, cookie: 1n, length: 4 }), Buffer.alloc(4));
  t.equal((await readSimpleReply(client)).error, 1, 'EPERM');
  await waitFor(() => lines.some((l) => l.startsWith('request')), 'the request event');
  t.ok(lines.includes('request #1 base 1 errno=1 bytes=0'), lines.join('\n'));
  t.equal(f.server.sessions()[0]?.overlay, 'read-only');
});

t.test('the overlay reports its copy-ups, zeroed blocks and blocks written with no data', async (t) => {
  const { events, lines } = recorder();
  const f = await startFixture(t, SIZE, { events: [events], exportName: 'golden' });
  const { client } = await f.connect({ exportName: 'golden@y' });
  client.write(requestBytes({ type: WRITE, cookie: 1n, offset: 100, length: 10 }), Buffer.alloc(10, 7)); // partial block 0
  await readSimpleReply(client);
  client.write(requestBytes({ type: 4, cookie: 2n, offset: 8192, length: 8192 })); // TRIM blocks 2 and 3
  await readSimpleReply(client);
  client.write(requestBytes({ type: 6, cookie: 3n, offset: 16384 + 10, length: 100 })); // WRITE_ZEROES inside block 4
  await readSimpleReply(client);
  const zeros = Buffer.alloc(3 * 4096);
  zeros[4096] = 1; // blocks 8 and 10 all zeros, block 9 data
  client.write(requestBytes({ type: WRITE, cookie: 4n, offset: 8 * 4096, length: zeros.length }), zeros);
  await readSimpleReply(client);
  t.strictSame(
    lines.filter((l) => /^(copy-up|zeroed|elided)/.test(l)),
    [
      'copy-up named-golden@y.cow 0 from base',
      'zeroed named-golden@y.cow 2+2',
      'copy-up named-golden@y.cow 4 from base',
      'elided named-golden@y.cow 8+1 to zero',
      'elided named-golden@y.cow 10+1 to zero',
    ],
  );
});
