// The metrics observer (metrics.ts): counters move with the events, under the labels the README
// lists; gauges come from the live sessions, a shared named overlay once; handshakes that end
// without an export are counted under fixed reasons, from a real server's own wording too.

import { register as globalRegistry } from 'prom-client';
import t from 'tap';
import { HANDSHAKE_ENDS, handshakeEnd, ServerMetrics } from '../../lib/server/metrics.js';
import { MAX_EXPORT_LABELS, OTHER_EXPORTS } from '../../lib/server/request-counts.js';
import { NO_EVENTS, type OverlayKind, type ServerEvents, type SessionRecord } from '../../lib/server/server-events.js';
import { parseExposition } from '../helpers/metrics-serve.js';
import { requestBytes } from '../helpers/raw-nbd/wire.js';
import { startFixture } from '../helpers/server-fixture.js';
import { waitFor } from '../helpers/wait.js';

const READ = 0;
const WRITE = 1;
const FLUSH = 3;
const WRITE_ZEROES = 6;
const EPERM = 1;
const EINVAL = 22;
const ENOSPC = 28;

/** The exposition as series text (`name{labels}`) → value. */
async function scrape(metrics: ServerMetrics): Promise<Map<string, number>> {
  return parseExposition(await metrics.registry.metrics());
}

function session(id: number, exportName: string | null, overlay: OverlayKind | null, overlayBytes = 0): SessionRecord {
  return {
    id,
    peer: `127.0.0.1:${40000 + id}`,
    openedAt: Date.now(),
    exportName,
    configuredExport: exportName?.split('@')[0] ?? null,
    overlay,
    structuredReplies: true,
    metaContexts: [],
    tls: null,
    requests: 0,
    bytesRead: 0,
    bytesWritten: 0,
    overlayBytes: () => overlayBytes,
  };
}

t.test('requests are counted by export, command and result; payload bytes by export', async (t) => {
  const m = new ServerMetrics({ processMetrics: false });
  const golden = session(1, 'golden', 'throwaway');
  const alice = session(2, 'silver@alice', 'named');
  m.requestDone(golden, READ, 0, 4096, 0.00003);
  m.requestDone(golden, READ, 0, 512, 0.00004);
  m.requestDone(golden, WRITE, ENOSPC, 0, 0.0002);
  m.requestDone(alice, WRITE, 0, 65536, 0.0007);
  m.requestDone(alice, WRITE_ZEROES, EPERM, 0, 0.00001);
  m.requestDone(alice, FLUSH, EINVAL, 0, 0.003);
  m.requestDone(alice, 99, EINVAL, 0, 0.00001); // an unknown command: the client's number
  m.requestDone(alice, READ, 42, 0, 0.00001); // an errno the table does not name
  const s = await scrape(m);
  t.equal(s.get('nbd_cow_requests_total{export="golden",command="read",result="ok"}'), 2);
  t.equal(s.get('nbd_cow_requests_total{export="golden",command="write",result="ENOSPC"}'), 1);
  t.equal(s.get('nbd_cow_requests_total{export="silver",command="write",result="ok"}'), 1);
  t.equal(s.get('nbd_cow_requests_total{export="silver",command="write_zeroes",result="EPERM"}'), 1);
  t.equal(s.get('nbd_cow_requests_total{export="silver",command="flush",result="EINVAL"}'), 1);
  t.equal(s.get('nbd_cow_requests_total{export="silver",command="unknown",result="EINVAL"}'), 1);
  t.equal(s.get('nbd_cow_requests_total{export="silver",command="read",result="other"}'), 1);
  t.equal([...s.keys()].filter((k) => k.startsWith('nbd_cow_requests_total')).length, 7, 'no other series');
  t.equal(s.get('nbd_cow_read_bytes_total{export="golden"}'), 4608);
  t.equal(s.get('nbd_cow_written_bytes_total{export="golden"}'), 0);
  t.equal(s.get('nbd_cow_written_bytes_total{export="silver"}'), 65536, 'a named overlay counts under its export');
  t.equal(s.get('nbd_cow_read_bytes_total{export="silver"}'), 0);

  m.requestDone(golden, READ, 0, 4096, 0.00003);
  t.equal((await scrape(m)).get('nbd_cow_requests_total{export="golden",command="read",result="ok"}'), 3, 'counts go on');
});

t.test('durations fill cumulative buckets by export and command, with sum and count', async (t) => {
  const m = new ServerMetrics({ processMetrics: false });
  const golden = session(1, 'golden', 'throwaway');
  for (const seconds of [0.00001, 0.00003, 0.0004, 2]) m.requestDone(golden, READ, 0, 1, seconds);
  const s = await scrape(m);
  const bucket = (le: string): number | undefined =>
    s.get(`nbd_cow_request_duration_seconds_bucket{export="golden",command="read",le="${le}"}`);
  t.equal(bucket('0.00001'), 1, 'a bound is inclusive (le)');
  t.equal(bucket('0.000025'), 1);
  t.equal(bucket('0.00005'), 2);
  t.equal(bucket('0.0005'), 3);
  t.equal(bucket('1'), 3, '2 s is past the last bound');
  t.equal(bucket('+Inf'), 4);
  t.equal(s.get('nbd_cow_request_duration_seconds_count{export="golden",command="read"}'), 4);
  t.equal(s.get('nbd_cow_request_duration_seconds_sum{export="golden",command="read"}'), 0.00001 + 0.00003 + 0.0004 + 2);
  const text = await m.registry.metrics();
  t.match(text, '# TYPE nbd_cow_request_duration_seconds histogram');
});

t.test('connections by export ("" while negotiating) and overlays from the live sessions', async (t) => {
  const m = new ServerMetrics({ processMetrics: false });
  const negotiating = session(1, null, null);
  const throwaway = [session(2, 'golden', 'throwaway', 4096), session(3, 'golden', 'throwaway', 8192)];
  // Three connections share golden@alice: each reports the one overlay's bytes. golden@bob is another.
  const alice = [1, 2, 3].map((i) => session(10 + i, 'golden@alice', 'named', 65536));
  alice.push(session(14, 'golden@bob', 'named', 4096));
  const readOnly = session(20, 'base', 'read-only');
  for (const s of [negotiating, ...throwaway, ...alice, readOnly]) m.connectionOpened(s);
  let s = await scrape(m);
  t.equal(s.get('nbd_cow_connections{export=""}'), 1);
  t.equal(s.get('nbd_cow_connections{export="golden"}'), 6, 'named overlay connections count under their export');
  t.equal(s.get('nbd_cow_connections{export="base"}'), 1);
  t.equal(s.get('nbd_cow_overlays_open{export="golden",kind="throwaway"}'), 2, 'one overlay per throwaway connection');
  t.equal(s.get('nbd_cow_overlay_data_bytes{export="golden",kind="throwaway"}'), 12288);
  t.equal(s.get('nbd_cow_overlays_open{export="golden",kind="named"}'), 2, 'a shared named overlay once, and golden@bob');
  t.equal(s.get('nbd_cow_overlay_data_bytes{export="golden",kind="named"}'), 65536 + 4096, "alice's bytes once, and bob's");
  t.notOk(
    [...s.keys()].some((k) => k.includes('export="base",kind')),
    'a read-only export has no overlay',
  );

  for (const c of [...throwaway, ...alice, negotiating]) m.connectionClosed(c, 'client closed the connection');
  s = await scrape(m);
  t.equal(s.get('nbd_cow_connections{export=""}'), 0, 'the negotiating series stays, at 0');
  t.equal(s.get('nbd_cow_connections{export="golden"}'), undefined, 'an export without connections is gone');
  t.equal(s.get('nbd_cow_overlays_open{export="golden",kind="throwaway"}'), undefined);
  t.equal(s.get('nbd_cow_connections{export="base"}'), 1);
});

t.test('exposition() reads each overlay once for both overlay gauges', async (t) => {
  const m = new ServerMetrics({ processMetrics: false });
  let reads = 0;
  const record = {
    ...session(1, 'golden', 'throwaway'),
    overlayBytes: () => {
      reads++;
      return 4096;
    },
  };
  m.connectionOpened(record);
  const text = await m.exposition();
  t.equal(reads, 1, 'one read of the map per scrape');
  t.match(text, 'nbd_cow_overlay_data_bytes{export="golden",kind="throwaway"} 4096');
  t.match(text, 'nbd_cow_overlays_open{export="golden",kind="throwaway"} 1');
  await m.registry.metrics();
  t.equal(reads, 3, 'the registry used directly reads it per gauge, still right');
});

t.test('handshake reasons map to a fixed set of labels', async (t) => {
  const cases: [string, string][] = [
    ['no export chosen within 10 s', 'timeout'],
    ['TLS handshake failed: tlsv1 alert unknown ca (ERR_SSL_TLSV1_ALERT_UNKNOWN_CA)', 'tls'],
    ['TLS handshake refused: no certificate', 'tls'],
    ['writing the STARTTLS reply: write EPIPE', 'tls'],
    ['NBD_OPT_EXPORT_NAME before STARTTLS', 'tls'],
    ['protocol error: bad option magic 0x4141414141414141', 'protocol'],
    ['client closed the connection', 'client-closed'],
    ['client closed its side', 'client-closed'],
    ['client sent NBD_OPT_ABORT', 'client-closed'],
    ['socket error: read ECONNRESET', 'client-closed'],
    ['socket closed', 'client-closed'],
    ['server shutting down', 'shutdown'],
    ['destroyed', 'shutdown'],
    ['NBD_OPT_EXPORT_NAME "nope": no such export', 'other'],
    ['internal error', 'other'],
    ['anything a client might make us say', 'other'],
  ];
  for (const [reason, label] of cases) t.equal(handshakeEnd(reason), label, reason);

  const m = new ServerMetrics({ processMetrics: false });
  for (const [i, [reason]] of cases.entries()) m.connectionClosed(session(i, null, null), reason);
  m.connectionClosed(session(100, 'golden', 'throwaway'), 'no export chosen within 10 s'); // had an export: not counted
  const s = await scrape(m);
  const counts = HANDSHAKE_ENDS.map((end) => s.get(`nbd_cow_handshakes_without_export_total{reason="${end}"}`));
  t.strictSame(counts, [1, 4, 1, 5, 2, 3], HANDSHAKE_ENDS.join(' '));
});

t.test('refused connections, copy-ups, zeroed and elided blocks', async (t) => {
  const m = new ServerMetrics({ processMetrics: false });
  let s = await scrape(m);
  t.equal(s.get('nbd_cow_connections_refused_total{reason="allow-list"}'), 0, 'present at 0 before any refusal');
  t.equal(s.get('nbd_cow_copy_ups_total{from="base"}'), 0);
  t.equal(s.get('nbd_cow_elided_blocks_total{to="zero"}'), 0);
  t.equal(s.get('nbd_cow_elided_blocks_total{to="base"}'), 0);
  m.connectionRefused('10.0.0.1:5000', 'allow-list');
  m.connectionRefused('10.0.0.2:5000', 'max-connections');
  m.connectionRefused('10.0.0.3:5000', 'max-connections');
  m.copiedUp('/o/a.cow', 3, 'base');
  m.copiedUp('/o/a.cow', 4, 'zero');
  m.copiedUp('/o/b.cow', 0, 'base');
  m.zeroed('/o/a.cow', 10, 5);
  m.zeroed('/o/b.cow', 0, 1);
  m.elided('/o/a.cow', 20, 3, 'zero');
  m.elided('/o/b.cow', 7, 1, 'zero');
  m.elided('/o/b.cow', 9, 2, 'base');
  s = await scrape(m);
  t.equal(s.get('nbd_cow_connections_refused_total{reason="allow-list"}'), 1);
  t.equal(s.get('nbd_cow_connections_refused_total{reason="max-connections"}'), 2);
  t.equal(s.get('nbd_cow_copy_ups_total{from="base"}'), 2);
  t.equal(s.get('nbd_cow_copy_ups_total{from="zero"}'), 1);
  t.equal(s.get('nbd_cow_zeroed_blocks_total'), 6);
  t.equal(s.get('nbd_cow_elided_blocks_total{to="zero"}'), 4);
  t.equal(s.get('nbd_cow_elided_blocks_total{to="base"}'), 2);
});

t.test('remote bases: fetch and cache counters by export, read at each scrape', async (t) => {
  const m = new ServerMetrics({ processMetrics: false });
  const stats = {
    fetches: 3,
    bytesFetched: 4096,
    retries: 1,
    failures: 0,
    hits: 10,
    misses: 2,
    cachedBlocks: 2,
    cacheSlots: 8,
    cachedBytes: 131072,
    cacheCapacity: 524288,
    distinctBytesRead: 8192,
  };
  m.watchRemoteBases(() => [{ exportName: 'golden', stats }]);
  let got = await scrape(m);
  t.equal(got.get('nbd_cow_remote_fetches_total{export="golden"}'), 3);
  t.equal(got.get('nbd_cow_remote_fetched_bytes_total{export="golden"}'), 4096);
  t.equal(got.get('nbd_cow_remote_retries_total{export="golden"}'), 1);
  t.equal(got.get('nbd_cow_remote_failures_total{export="golden"}'), 0);
  t.equal(got.get('nbd_cow_remote_cache_hits_total{export="golden"}'), 10);
  t.equal(got.get('nbd_cow_remote_cache_misses_total{export="golden"}'), 2);
  t.equal(got.get('nbd_cow_remote_cached_bytes{export="golden"}'), 131072);
  t.equal(got.get('nbd_cow_remote_cache_capacity_bytes{export="golden"}'), 524288);
  t.equal(got.get('nbd_cow_remote_distinct_read_bytes{export="golden"}'), 8192);
  stats.hits = 11;
  got = await scrape(m);
  t.equal(got.get('nbd_cow_remote_cache_hits_total{export="golden"}'), 11, 'read afresh');
});

t.test('past MAX_EXPORT_LABELS exports, new ones are counted together as (other)', async (t) => {
  const m = new ServerMetrics({ processMetrics: false });
  for (let i = 0; i < MAX_EXPORT_LABELS + 10; i++) m.requestDone(session(i, `e${i}@n`, 'named'), WRITE, 0, 1, 0.00001);
  const s = await scrape(m);
  const exports = new Set([...s.keys()].filter((k) => k.startsWith('nbd_cow_written_bytes_total')));
  t.equal(exports.size, MAX_EXPORT_LABELS + 1, 'the cap, plus (other)');
  t.equal(s.get(`nbd_cow_written_bytes_total{export="${OTHER_EXPORTS}"}`), 10);
  t.equal(s.get('nbd_cow_written_bytes_total{export="e0"}'), 1, 'the first ones keep their own series');
});

t.test("Node's process metrics under nbd_cow_, in this registry only", async (t) => {
  const m = new ServerMetrics();
  const text = await m.registry.metrics();
  t.match(text, /^nbd_cow_process_cpu_user_seconds_total \d/m);
  t.match(text, /^nbd_cow_nodejs_heap_size_used_bytes \d/m);
  t.notMatch(await new ServerMetrics({ processMetrics: false }).registry.metrics(), 'nbd_cow_process_');
  t.equal(globalRegistry.getSingleMetric('nbd_cow_requests_total'), undefined, "prom-client's global registry is untouched");
  t.equal(globalRegistry.getSingleMetric('nbd_cow_process_cpu_user_seconds_total'), undefined);
});

t.test('from a real server: requests by export, and handshakes ended by timeout and protocol error', async (t) => {
  const metrics = new ServerMetrics({ processMetrics: false });
  let closed = 0;
  const closes: ServerEvents = { ...NO_EVENTS, connectionClosed: () => closed++ };
  const f = await startFixture(t, 1024 * 1024, {
    events: [metrics, closes],
    exportName: 'golden',
    limits: { handshakeTimeoutMs: 300 },
  });
  const { client } = await f.connect({ exportName: 'golden@x' });
  client.write(requestBytes({ type: WRITE, cookie: 1n, offset: 0, length: 4096 }), Buffer.alloc(4096, 1));
  await client.read(16);
  client.write(requestBytes({ type: READ, cookie: 2n, offset: 0, length: 8192 }));
  await client.read(16 + 8192);

  const idle = await f.raw(); // sends nothing: dropped at the handshake deadline
  const garbage = await f.raw();
  await garbage.read(18); // the greeting
  garbage.write(Buffer.from('00000001', 'hex'), Buffer.alloc(16, 0x41)); // client flags, then no option magic
  t.ok(await garbage.closed(5000), 'the garbage client is closed');
  t.ok(await idle.closed(5000), 'the idle client is closed');
  await waitFor(() => closed === 2, 'both handshakes to end');
  const s = await scrape(metrics);
  t.equal(s.get('nbd_cow_handshakes_without_export_total{reason="timeout"}'), 1);
  t.equal(s.get('nbd_cow_handshakes_without_export_total{reason="protocol"}'), 1);
  t.equal(s.get('nbd_cow_requests_total{export="golden",command="write",result="ok"}'), 1);
  t.equal(s.get('nbd_cow_requests_total{export="golden",command="read",result="ok"}'), 1);
  t.equal(s.get('nbd_cow_read_bytes_total{export="golden"}'), 8192);
  t.equal(s.get('nbd_cow_copy_ups_total{from="base"}'), 0, 'a whole-block write copies nothing up');
  t.equal(s.get('nbd_cow_connections{export="golden"}'), 1);
  t.equal(s.get('nbd_cow_overlays_open{export="golden",kind="named"}'), 1);
  t.equal(s.get('nbd_cow_overlay_data_bytes{export="golden",kind="named"}'), 4096);
});
