// The live session list of `serve --metrics` with two python3-libnbd connections open (`golden`
// and `golden@alice`): GET /sessions, `nbd-cow sessions URL` (a table) and `--json` (the JSON as
// served); once they close, the list is empty; a server that is not there is one line, exit 1.

import { join } from 'node:path';
import t from 'tap';
import type { SessionJson } from '../../lib/server/session-list.js';
import { makePatternBase } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { startMetricsServe } from '../helpers/metrics-serve.js';
import { pySession } from '../helpers/py-session.js';
import { runCli } from '../helpers/server-process.js';

async function getSessions(url: string): Promise<{ type: string | null; list: SessionJson[] }> {
  const response = await fetch(url, { signal: AbortSignal.timeout(10_000) });
  return { type: response.headers.get('content-type'), list: (await response.json()) as SessionJson[] };
}

if (requireClients(t, [], true)) {
  t.test('two live connections in /sessions and in `nbd-cow sessions`', async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, 4 * 1024 * 1024, 'golden.img');
    const server = await startMetricsServe(t, base, ['--overlay-dir', join(dir, 'overlays')]);
    const sessionsUrl = server.metricsUri.replace(/metrics$/, 'sessions');
    const py = pySession(t);
    await py.ok({ op: 'connect', h: 'g', uri: server.uri });
    await py.ok({ op: 'connect', h: 'a', uri: `${server.uri}@alice` });
    await py.ok({ op: 'pwrite', h: 'g', offset: 0, data: Buffer.alloc(8192, 1).toString('base64') });
    await py.ok({ op: 'pread', h: 'a', offset: 0, length: 4096 });

    const { type, list } = await getSessions(sessionsUrl);
    t.equal(type, 'application/json');
    t.equal(list.length, 2, 'both connections');
    const golden = list.find((s) => s.export === 'golden');
    const alice = list.find((s) => s.export === 'golden@alice');
    t.match(golden, { overlay: 'throwaway', requests: 1, bytes_read: 0, bytes_written: 8192, overlay_bytes: 8192, tls: null });
    t.match(alice, { overlay: 'named', requests: 1, bytes_read: 4096, bytes_written: 0, overlay_bytes: 0, tls: null });
    t.match(golden?.peer, /^127\.0\.0\.1:\d+$/);
    t.ok((golden?.age_seconds ?? -1) >= 0);

    // The table, from the metrics URL the server printed (its /sessions is beside it).
    const table = await runCli(['sessions', server.metricsUri]);
    t.equal(table.code, 0, table.stderr);
    const lines = table.stdout.trimEnd().split('\n');
    t.equal(lines.length, 3, table.stdout);
    t.match(lines[0], /^ID\s+PEER\s+EXPORT\s+OVERLAY\s+AGE\s+REQUESTS\s+READ\s+WRITTEN\s+OVERLAY DATA\s+TLS$/);
    t.ok(
      lines.some((l) => /\sgolden\s+throwaway\s+\d+s\s+1\s+0 B\s+8\.0 KiB\s+8\.0 KiB\s+-$/.test(l)),
      'golden: 1 request, 8 KiB written, 8 KiB of overlay data',
    );
    t.ok(
      lines.some((l) => /\sgolden@alice\s+named\s+\d+s\s+1\s+4\.0 KiB\s+0 B\s+0 B\s+-$/.test(l)),
      'golden@alice: 1 request, 4 KiB read',
    );

    const json = await runCli(['sessions', '--json', new URL(server.metricsUri).host]);
    t.equal(json.code, 0, json.stderr);
    t.strictSame(
      (JSON.parse(json.stdout) as SessionJson[]).map((s) => [s.id, s.export]).sort(),
      list.map((s) => [s.id, s.export]).sort(),
      '--json: the same sessions, as served',
    );

    await py.ok({ op: 'close', h: 'g' });
    await py.ok({ op: 'close', h: 'a' });
    // A connection leaves the list once its socket and device are closed, a moment after the client returns.
    let after = (await getSessions(sessionsUrl)).list;
    for (let i = 0; i < 200 && after.length > 0; i++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
      after = (await getSessions(sessionsUrl)).list;
    }
    t.strictSame(after, [], 'no sessions once both closed');
    const empty = await runCli(['sessions', server.metricsUri]);
    t.equal(empty.stdout, 'no sessions\n');
  });

  t.test('`nbd-cow sessions` against nothing: one line on stderr, exit 1', async (t) => {
    const r = await runCli(['sessions', 'http://127.0.0.1:1/']);
    t.equal(r.code, 1);
    t.match(r.stderr, /^nbd-cow: cannot reach http:\/\/127\.0\.0\.1:1\/sessions: ECONNREFUSED\n$/);
    const bad = await runCli(['sessions', 'not a url']);
    t.equal(bad.code, 1);
    t.match(bad.stderr, /^nbd-cow: /);
  });
}
