// The session list (session-list.ts): a SessionRecord as /sessions shows it, the URL
// `nbd-cow sessions` asks for what the operator typed, and the table it prints.

import { createServer } from 'node:http';
import t from 'tap';
import type { SessionRecord } from '../../lib/server/server-events.js';
import {
  fetchSessions,
  formatAge,
  formatBytes,
  formatSessionTable,
  parseSessions,
  type SessionJson,
  sessionsUrl,
  toSessionJson,
} from '../../lib/server/session-list.js';

const OPENED = Date.parse('2026-12-01T10:00:00.000Z');

const RECORD: SessionRecord = {
  id: 3,
  peer: '10.1.2.3:5000',
  openedAt: OPENED,
  exportName: 'golden',
  configuredExport: 'golden',
  overlay: 'throwaway',
  structuredReplies: false,
  metaContexts: [],
  tls: { protocol: 'TLSv1.2', cipher: 'ECDHE-RSA-AES128-GCM-SHA256', identity: undefined },
  requests: 5,
  bytesRead: 1536,
  bytesWritten: 0,
  overlayBytes: () => 3 * 1024 * 1024,
};

t.test('a record as /sessions shows it', async (t) => {
  t.strictSame(toSessionJson(RECORD, OPENED + 75_340), {
    id: 3,
    peer: '10.1.2.3:5000',
    export: 'golden',
    overlay: 'throwaway',
    opened_at: '2026-12-01T10:00:00.000Z',
    age_seconds: 75.3,
    requests: 5,
    bytes_read: 1536,
    bytes_written: 0,
    overlay_bytes: 3145728,
    structured_replies: false,
    meta_contexts: [],
    tls: { version: 'TLSv1.2', cipher: 'ECDHE-RSA-AES128-GCM-SHA256', identity: null },
  });
  const negotiating = toSessionJson({ ...RECORD, exportName: null, overlay: null, tls: null }, OPENED);
  t.match(negotiating, { export: null, overlay: null, tls: null, age_seconds: 0 });
});

t.test('the URL asked for what the operator typed', async (t) => {
  const cases: [string, string][] = [
    ['http://127.0.0.1:9810', 'http://127.0.0.1:9810/sessions'],
    ['http://127.0.0.1:9810/', 'http://127.0.0.1:9810/sessions'],
    ['http://127.0.0.1:9810/metrics', 'http://127.0.0.1:9810/sessions'],
    ['127.0.0.1:9810', 'http://127.0.0.1:9810/sessions'],
    ['[::1]:9810', 'http://[::1]:9810/sessions'],
    ['http://proxy.example/nbd/metrics', 'http://proxy.example/nbd/sessions'],
    ['http://host:1/custom', 'http://host:1/custom'],
  ];
  for (const [typed, url] of cases) t.equal(sessionsUrl(typed).href, url, typed);
  t.throws(() => sessionsUrl('http://'), TypeError);
});

t.test('the table: one line per session under a header, numbers aligned right', async (t) => {
  const alice: SessionJson = {
    ...toSessionJson(RECORD, OPENED + 4000),
    id: 12,
    peer: '[::1]:41000',
    export: 'golden@alice',
    overlay: 'named',
    tls: { version: 'TLSv1.3', cipher: 'x', identity: 'alice' },
  };
  const negotiating: SessionJson = { ...toSessionJson(RECORD, OPENED + 7_300_000), export: null, overlay: null, tls: null };
  t.equal(
    formatSessionTable([toSessionJson(RECORD, OPENED + 75_000), alice, negotiating]),
    [
      'ID  PEER           EXPORT         OVERLAY      AGE  REQUESTS     READ  WRITTEN  OVERLAY DATA  TLS',
      ' 3  10.1.2.3:5000  golden         throwaway  1m15s         5  1.5 KiB      0 B       3.0 MiB  TLSv1.2',
      '12  [::1]:41000    golden@alice   named         4s         5  1.5 KiB      0 B       3.0 MiB  TLSv1.3 alice',
      ' 3  10.1.2.3:5000  (negotiating)  -          2h01m         5  1.5 KiB      0 B       3.0 MiB  -',
      '',
    ].join('\n'),
  );
  t.equal(formatSessionTable([]), 'no sessions\n');
});

t.test('sizes and ages in short words', async (t) => {
  t.equal(formatBytes(0), '0 B');
  t.equal(formatBytes(1023), '1023 B');
  t.equal(formatBytes(1024), '1.0 KiB');
  t.equal(formatBytes(10 * 1024 ** 3 + 1), '10.0 GiB');
  t.equal(formatBytes(3 * 1024 ** 5), '3072.0 TiB');
  t.equal(formatAge(0.4), '0s');
  t.equal(formatAge(59.9), '59s');
  t.equal(formatAge(60), '1m00s');
  t.equal(formatAge(3599), '59m59s');
  t.equal(formatAge(90_061), '25h01m');
});

t.test('a body that is not a session list is refused with the URL', async (t) => {
  t.throws(() => parseSessions('<html>', 'http://x/sessions'), { message: /http:\/\/x\/sessions did not answer with JSON/ });
  t.throws(() => parseSessions('{"id":1}', 'http://x/sessions'), { message: /did not answer with a session list/ });
  t.throws(() => parseSessions('[1]', 'http://x/sessions'), { message: /did not answer with a session list/ });
  t.strictSame(parseSessions('[]', 'u'), []);
  t.equal(parseSessions(JSON.stringify([toSessionJson(RECORD)]), 'u')[0]?.peer, '10.1.2.3:5000');
});

t.test('fetchSessions: the body of a 200, an Error naming the URL otherwise', async (t) => {
  const http = createServer((req, res) => {
    if (req.url === '/sessions') res.end('[]');
    else res.writeHead(404).end('not found\n');
  });
  await new Promise<void>((resolve) => http.listen(0, '127.0.0.1', resolve));
  t.teardown(() => http.close());
  const address = http.address();
  const port = typeof address === 'object' && address !== null ? address.port : 0;
  t.equal(await fetchSessions(new URL(`http://127.0.0.1:${port}/sessions`)), '[]');
  await t.rejects(fetchSessions(new URL(`http://127.0.0.1:${port}/other`)), {
    message: `http://127.0.0.1:${port}/other: HTTP 404 not found`,
  });
  http.close();
  await new Promise((resolve) => http.once('close', resolve));
  await t.rejects(fetchSessions(new URL(`http://127.0.0.1:${port}/sessions`)), {
    message: `cannot reach http://127.0.0.1:${port}/sessions: ECONNREFUSED`,
  });
});
