// The HTTP status endpoint (status-server.ts): /metrics and /sessions, 404 and 405 otherwise,
// and what it does to clients that send too much or too little; stopped by close().

import { request } from 'node:http';
import { connect, createServer, type Socket } from 'node:net';
import t, { type Test } from 'tap';
import { ServerMetrics } from '../../lib/server/metrics.js';
import type { SessionRecord } from '../../lib/server/server-events.js';
import type { SessionJson } from '../../lib/server/session-list.js';
import { localStatus, type StatusLimits, StatusServer } from '../../lib/server/status-server.js';
import { within } from '../helpers/wait.js';

const RECORD: SessionRecord = {
  id: 7,
  peer: '[::1]:50000',
  openedAt: Date.now() - 90_000,
  exportName: 'golden@alice',
  configuredExport: 'golden',
  overlay: 'named',
  structuredReplies: true,
  metaContexts: ['base:allocation'],
  tls: { protocol: 'TLSv1.3', cipher: 'TLS_AES_128_GCM_SHA256', identity: 'alice' },
  requests: 12,
  bytesRead: 4096,
  bytesWritten: 8192,
  overlayBytes: () => 65536,
};

async function start(
  t: Test,
  limits: Partial<StatusLimits> = {},
): Promise<{ server: StatusServer; metrics: ServerMetrics; port: number }> {
  const metrics = new ServerMetrics({ processMetrics: false });
  const server = await StatusServer.start({ host: '127.0.0.1', port: 0, source: localStatus(metrics, () => [RECORD]), limits });
  t.teardown(() => server.close());
  return { server, metrics, port: Number(new URL(server.url).port) };
}

interface Answer {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: string;
}

function get(port: number, path: string, method = 'GET', headers: Record<string, string> = {}): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method, headers, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8').on('data', (s: string) => (body += s));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

/** A raw TCP client, and a promise of its close. */
function raw(port: number): Promise<{ socket: Socket; closed: Promise<string> }> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, '127.0.0.1', () => {
      let received = '';
      socket.setEncoding('utf8').on('data', (s: string) => (received += s));
      const closed = new Promise<string>((done) => socket.on('close', () => done(received)));
      resolve({ socket, closed });
    });
    socket.on('error', reject);
  });
}

t.test('GET /metrics serves the registry in its content type', async (t) => {
  const { metrics, port, server } = await start(t);
  t.match(server.url, /^http:\/\/127\.0\.0\.1:\d+$/);
  metrics.requestDone(RECORD, 0, 0, 4096, 0.00002);
  const answer = await get(port, '/metrics');
  t.equal(answer.status, 200);
  t.equal(answer.headers['content-type'], metrics.registry.contentType);
  t.match(answer.body, 'nbd_cow_requests_total{export="golden",command="read",result="ok"} 1');
  t.equal((await get(port, '/metrics?name[]=x')).status, 200, 'a query string is ignored');
});

t.test('GET /sessions lists the sessions as JSON', async (t) => {
  const { port } = await start(t);
  const answer = await get(port, '/sessions');
  t.equal(answer.status, 200);
  t.equal(answer.headers['content-type'], 'application/json');
  const list = JSON.parse(answer.body) as SessionJson[];
  t.equal(list.length, 1);
  t.match(list[0], {
    id: 7,
    peer: '[::1]:50000',
    export: 'golden@alice',
    overlay: 'named',
    requests: 12,
    bytes_read: 4096,
    bytes_written: 8192,
    overlay_bytes: 65536,
    structured_replies: true,
    meta_contexts: ['base:allocation'],
    tls: { version: 'TLSv1.3', cipher: 'TLS_AES_128_GCM_SHA256', identity: 'alice' },
  });
  t.ok((list[0]?.age_seconds ?? 0) >= 90, `age ${list[0]?.age_seconds}`);
});

t.test('other paths are 404, other methods 405, and nothing echoes the request', async (t) => {
  const { port } = await start(t);
  const missing = await get(port, '/<script>');
  t.equal(missing.status, 404);
  t.notMatch(missing.body, 'script');
  const post = await get(port, '/metrics', 'POST', { 'content-length': '0' });
  t.equal(post.status, 405);
  t.equal(post.headers['allow'], 'GET');
  t.equal((await get(port, '/sessions', 'DELETE')).status, 405);
});

t.test('oversized request headers get 431', async (t) => {
  const { port } = await start(t, { maxHeaderBytes: 1024 });
  const answer = await get(port, '/metrics', 'GET', { 'x-filler': 'a'.repeat(4000) });
  t.equal(answer.status, 431);
});

t.test('a client that never finishes its headers is dropped, and others are still served', async (t) => {
  const { port } = await start(t, { headersTimeoutMs: 300, requestTimeoutMs: 300 });
  const slow = await raw(port);
  slow.socket.write('GET /metrics HTTP/1.1\r\nHost: x\r\n'); // and never the blank line
  const silent = await raw(port); // sends nothing at all
  t.equal((await get(port, '/sessions')).status, 200, 'served meanwhile');
  const answer = await within(slow.closed, 10_000, 'the slow client to be dropped');
  t.ok(answer === '' || answer.startsWith('HTTP/1.1 408'), `a 408 at most: ${JSON.stringify(answer.slice(0, 40))}`);
  await within(silent.closed, 10_000, 'the silent client to be dropped');
});

t.test('close() drops kept-alive connections and stops listening', async (t) => {
  const { server, port } = await start(t);
  const kept = await raw(port);
  kept.socket.write('GET /sessions HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n');
  await new Promise<void>((resolve) => kept.socket.once('data', () => resolve()));
  await within(server.close(), 5000, 'close()');
  await within(kept.closed, 5000, 'the kept-alive connection to close');
  await t.rejects(get(port, '/metrics'), { code: 'ECONNREFUSED' });
  await server.close(); // idempotent
});

t.test('a port in use is an error naming the endpoint', async (t) => {
  const holder = createServer();
  await new Promise<void>((resolve) => holder.listen(0, '127.0.0.1', resolve));
  t.teardown(() => holder.close());
  const address = holder.address();
  const port = typeof address === 'object' && address !== null ? address.port : 0;
  const metrics = new ServerMetrics({ processMetrics: false });
  await t.rejects(StatusServer.start({ host: '127.0.0.1', port, source: localStatus(metrics, () => []) }), {
    code: 'EADDRINUSE',
    message: new RegExp(`^metrics endpoint 127\\.0\\.0\\.1:${port}: `),
  });
});
