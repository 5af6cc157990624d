// `serve --metrics 127.0.0.1:0` driven by python3-libnbd on `golden` and `golden@alice`: each
// request, payload byte, connection, overlay, copy-up and zeroed block shows in /metrics under
// the export `golden` (a named overlay counts under its export), as counted by the test; a client that hangs up in the handshake is counted too.

import { connect } from 'node:net';
import { join } from 'node:path';
import t from 'tap';
import { guardBase, makePatternBase } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { scrape, scrapeUntil, startMetricsServe } from '../helpers/metrics-serve.js';
import { pySession } from '../helpers/py-session.js';
import { within } from '../helpers/wait.js';

const MiB = 1024 * 1024;
const b64 = (size: number, byte: number): string => Buffer.alloc(size, byte).toString('base64');

if (requireClients(t, [], true)) {
  t.test('requests, bytes, connections and overlays are counted per export', async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, 8 * MiB, 'golden.img');
    const guard = await guardBase(t, base);
    const server = await startMetricsServe(t, base, ['--overlay-dir', join(dir, 'overlays')]);
    t.match(server.uri, /^nbd:\/\/127\.0\.0\.1:\d+\/golden$/);
    t.match(server.metricsUri, /^http:\/\/127\.0\.0\.1:\d+\/metrics$/);

    const py = pySession(t);
    await py.ok({ op: 'connect', h: 'g', uri: server.uri });
    await py.ok({ op: 'connect', h: 'a', uri: `${server.uri}@alice` });
    // golden: 2 writes (one partial: a copy-up from the base), 3 reads, a trim of 16 blocks, a cache, a flush
    await py.ok({ op: 'pwrite', h: 'g', offset: 0, data: b64(65536, 0x11) });
    await py.ok({ op: 'pwrite', h: 'g', offset: 2 * MiB + 10, data: b64(100, 0x22) });
    for (let i = 0; i < 3; i++) await py.ok({ op: 'pread', h: 'g', offset: i * 4096, length: 4096 });
    await py.ok({ op: 'trim', h: 'g', offset: MiB, length: 65536 });
    await py.ok({ op: 'cache', h: 'g', offset: 0, length: 65536 });
    await py.ok({ op: 'flush', h: 'g' });
    // golden@alice: a write, a read, a zeroed block
    await py.ok({ op: 'pwrite', h: 'a', offset: 0, data: b64(131072, 0x33) });
    await py.ok({ op: 'pread', h: 'a', offset: 0, length: 8192 });
    await py.ok({ op: 'zero', h: 'a', offset: 4 * MiB, length: 4096 });

    const { type, samples } = await scrape(server.metricsUri);
    t.equal(type, 'text/plain; version=0.0.4; charset=utf-8');
    const requests = (exp: string, command: string): number | undefined =>
      samples.get(`nbd_cow_requests_total{export="${exp}",command="${command}",result="ok"}`);
    t.strictSame(
      ['write', 'read', 'trim', 'cache', 'flush', 'write_zeroes'].map((c) => requests('golden', c)),
      [2 + 1, 3 + 1, 1, 1, 1, 1],
      'golden and golden@alice: write read trim cache flush write_zeroes',
    );
    t.notOk(
      [...samples.keys()].some((k) => k.includes('@alice')),
      'no series for the named overlay itself',
    );
    t.notOk(
      [...samples.keys()].some((k) => k.startsWith('nbd_cow_requests_total') && !k.endsWith('result="ok"}')),
      'no errors',
    );
    t.equal(samples.get('nbd_cow_read_bytes_total{export="golden"}'), 3 * 4096 + 8192);
    t.equal(samples.get('nbd_cow_written_bytes_total{export="golden"}'), 65536 + 100 + 131072);
    t.equal(samples.get('nbd_cow_request_duration_seconds_count{export="golden",command="read"}'), 4);
    t.equal(samples.get('nbd_cow_request_duration_seconds_bucket{export="golden",command="read",le="+Inf"}'), 4);
    t.equal(samples.get('nbd_cow_connections{export="golden"}'), 2);
    t.equal(samples.get('nbd_cow_connections{export=""}'), 0);
    t.equal(samples.get('nbd_cow_overlays_open{export="golden",kind="throwaway"}'), 1);
    t.equal(samples.get('nbd_cow_overlays_open{export="golden",kind="named"}'), 1);
    t.equal(
      samples.get('nbd_cow_overlay_data_bytes{export="golden",kind="throwaway"}'),
      65536 + 4096,
      '16 blocks and the copied-up one',
    );
    t.equal(samples.get('nbd_cow_overlay_data_bytes{export="golden",kind="named"}'), 131072);
    t.equal(samples.get('nbd_cow_copy_ups_total{from="base"}'), 1);
    t.equal(samples.get('nbd_cow_zeroed_blocks_total'), 17, '16 trimmed, 1 zeroed');
    t.ok((samples.get('nbd_cow_process_resident_memory_bytes') ?? 0) > 0, "Node's process metrics");

    // A client that hangs up after the greeting.
    const hangUp = connect(Number(new URL(server.uri).port), '127.0.0.1');
    await within(new Promise((resolve) => hangUp.once('data', resolve)), 10_000, 'the greeting');
    hangUp.destroy();
    await py.ok({ op: 'close', h: 'g' });
    await py.ok({ op: 'close', h: 'a' });
    const after = await scrapeUntil(
      server.metricsUri,
      (s) =>
        s.get('nbd_cow_handshakes_without_export_total{reason="client-closed"}') === 1 &&
        s.get('nbd_cow_connections{export="golden"}') === undefined,
    );
    t.equal(after.get('nbd_cow_handshakes_without_export_total{reason="client-closed"}'), 1);
    t.equal(after.get('nbd_cow_connections{export="golden"}'), undefined, 'no connection left');
    t.equal(after.get('nbd_cow_overlays_open{export="golden",kind="named"}'), undefined, 'nor overlays');
    t.equal(after.get('nbd_cow_requests_total{export="golden",command="read",result="ok"}'), 4, 'counters stay');
    t.equal(await server.stop(), 0);
    await guard.check();
  });
}
