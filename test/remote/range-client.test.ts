// RangeClient's HTTP/1.1 framing, against a TCP server of the test's own that answers each request
// with scripted bytes (the cases a real server rarely produces on demand: split heads, a body that
// goes on past its length, a chunked error, a head too long, a close mid-body). The client against
// real servers: http-origin.test.ts (nginx, the fault proxy) and the e2e remote-base tests.

import net from 'node:net';
import t, { type Test } from 'tap';
import {
  type AnswerCheck,
  basicAuthorization,
  HEAD_LIMIT,
  isNetworkFailure,
  parseHead,
  RangeClient,
  requestText,
} from '../../lib/remote/range-client.js';

const accept: AnswerCheck = () => undefined;
const refuseErrors: AnswerCheck = (status) => (status >= 400 ? new Error(`the server answered ${status}`) : undefined);

/** A server that answers the n-th request (counted over all connections) with `answers[n](socket)`. */
async function scripted(
  t: Test,
  answers: Array<(socket: net.Socket, request: string) => void>,
): Promise<{ url: URL; connections: () => number; requests: string[] }> {
  const requests: string[] = [];
  let connections = 0;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    connections++;
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    let pending = '';
    socket.on('data', (chunk) => {
      pending += chunk.toString('latin1');
      for (let end = pending.indexOf('\r\n\r\n'); end >= 0; end = pending.indexOf('\r\n\r\n')) {
        const request = pending.slice(0, end + 4);
        pending = pending.slice(end + 4);
        const answer = answers[requests.length];
        requests.push(request);
        answer?.(socket, request);
      }
    });
    socket.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(async () => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  });
  const { port } = server.address() as net.AddressInfo;
  return { url: new URL(`http://user:p%40ss@127.0.0.1:${port}/images/golden.raw?v=2`), connections: () => connections, requests };
}

const ok206 = (body: Buffer, extra = ''): string =>
  `HTTP/1.1 206 Partial Content\r\nContent-Length: ${body.length}\r\nContent-Range: bytes 0-${body.length - 1}/99\r\n${extra}\r\n`;

t.test('heads, request text and basic authentication', async (t) => {
  t.same(parseHead('HTTP/1.1 206 Partial Content\r\nContent-Length: 4\r\nETag: "a"\r\netag: "b"'), {
    status: 206,
    http10: false,
    headers: { 'content-length': '4', etag: '"a"' },
  });
  t.same(parseHead('HTTP/1.0 200'), { status: 200, http10: true, headers: {} });
  for (const bad of ['HTTP/2 200 OK', 'HTTP/1.1 20 OK', 'ICY 200 OK', 'HTTP/1.1 200 OK\r\nno colon here', '']) {
    t.equal(parseHead(bad), undefined, `${JSON.stringify(bad)} is malformed`);
  }
  const url = new URL('http://[::1]:8080/a%20b/golden.raw?x=1');
  t.equal(
    requestText(url, { Range: 'bytes=0-9' }),
    'GET /a%20b/golden.raw?x=1 HTTP/1.1\r\nHost: [::1]:8080\r\nRange: bytes=0-9\r\n\r\n',
  );
  t.throws(() => requestText(url, { 'If-Match': '"a"\r\nX-Evil: 1' }), { code: 'EINVAL' });
  t.same(basicAuthorization(url), {});
  t.same(basicAuthorization(new URL('http://user:p%40ss@host/')), {
    Authorization: `Basic ${Buffer.from('user:p@ss').toString('base64')}`,
  });
});

t.test('one kept-alive connection; bodies straight into the buffer however they are split', async (t) => {
  const body = Buffer.from('0123456789abcdef');
  const server = await scripted(t, [
    (s) => s.write(Buffer.concat([Buffer.from(ok206(body)), body])), // head and body in one write
    (s) => {
      const whole = Buffer.concat([Buffer.from(ok206(body)), body]);
      for (let at = 0; at < whole.length; at += 7) s.write(whole.subarray(at, at + 7)); // split anywhere
    },
    (s) => s.write(Buffer.concat([Buffer.from(ok206(body, 'Connection: close\r\n')), body])),
    (s) => s.end(Buffer.concat([Buffer.from('HTTP/1.1 206 Partial Content\r\nConnection: close\r\n\r\n'), body])),
  ]);
  const client = new RangeClient(server.url);
  t.teardown(() => client.close());
  for (let i = 0; i < 4; i++) {
    const dest = Buffer.alloc(body.length);
    const answer = await client.request({ Range: 'bytes=0-15' }, dest, accept, 2000);
    t.equal(answer.status, 206);
    t.equal(answer.body, dest, 'the caller buffer is the body');
    t.same(dest, body, `answer ${i + 1}: the bytes`);
  }
  t.equal(server.connections(), 2, 'kept alive until the answer said Connection: close');
  t.match(server.requests[0], /^GET \/images\/golden\.raw\?v=2 HTTP\/1\.1\r\nHost: 127\.0\.0\.1:\d+\r\nRange: bytes=0-15\r\n/);
  t.notMatch(
    server.requests[0],
    /Authorization/,
    'RangeClient sends the headers it is given (HttpOrigin adds the authorization)',
  );
});

t.test('broken answers fail the request and close the connection', async (t) => {
  const body = Buffer.from('0123456789');
  const server = await scripted(t, [
    (s) => s.write(Buffer.concat([Buffer.from(ok206(Buffer.alloc(14))), body, Buffer.from('MORE')])),
    (s) => s.write(`HTTP/1.1 206 Partial Content\r\nX-Big: ${'x'.repeat(HEAD_LIMIT)}\r\n\r\n`),
    (s) => s.write('NOT HTTP AT ALL\r\n\r\n'),
    (s) => s.write(`HTTP/1.1 206 Partial Content\r\nTransfer-Encoding: chunked\r\n\r\na\r\n0123456789\r\n0\r\n\r\n`),
    (s) => {
      s.write(Buffer.concat([Buffer.from(ok206(body)), body.subarray(0, 4)]));
      setTimeout(() => s.destroy(), 20);
    },
    () => undefined, // never answered
  ]);
  const client = new RangeClient(server.url);
  t.teardown(() => client.close());
  const ask = (length: number, timeout = 2000): Promise<unknown> =>
    client.request({}, Buffer.alloc(length), accept, timeout).then(
      () => 'answered',
      (err: Error) => err,
    );
  const longer = await ask(10);
  t.match(longer, { code: 'EPROTO', message: /longer than the 10 bytes asked for/ });
  t.notOk(isNetworkFailure(longer), 'a broken answer is not a network failure (not tried again)');
  t.match(await ask(10), { code: 'EPROTO', message: new RegExp(`head over ${HEAD_LIMIT} bytes`) });
  t.match(await ask(10), { code: 'EPROTO', message: /malformed/ });
  t.match(await ask(10), { code: 'EPROTO', message: /chunked answer to a range request/ });
  const cut = await ask(10);
  t.match(cut, { message: /broke off after 4 of 10 bytes/ });
  t.ok(isNetworkFailure(cut), 'a body cut short is a network failure (tried again)');
  const silent = await ask(10, 200);
  t.match(silent, { code: 'ETIMEDOUT', message: /no complete answer within 0.2 s/ });
  t.ok(isNetworkFailure(silent));
  t.equal(server.connections(), 6, 'each failure closed its connection');
});

t.test('a refused answer: its S3 error code is read, chunked or not, then the connection closes', async (t) => {
  const xml = '<?xml version="1.0"?><Error><Code>SignatureDoesNotMatch</Code><Message>no</Message></Error>';
  const server = await scripted(t, [
    (s) => s.write(`HTTP/1.1 403 Forbidden\r\nContent-Length: ${xml.length}\r\n\r\n${xml}`),
    (s) => {
      s.write('HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n');
      s.write(`${xml.length.toString(16)}\r\n${xml.replace('SignatureDoesNotMatch', 'NoSuchKey')}\r\n0\r\n\r\n`);
    },
    (s) => s.write('HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n'), // the rest never comes
    (s) => s.write(ok206(Buffer.from('ab')) + 'ab'),
  ]);
  const client = new RangeClient(server.url);
  t.teardown(() => client.close());
  const ask = (): Promise<unknown> =>
    client.request({}, Buffer.alloc(2), refuseErrors, 5000).then(
      (a) => a.body.toString(),
      (e: Error) => e,
    );
  t.match(await ask(), { message: 'the server answered 403 (SignatureDoesNotMatch)' });
  t.match(await ask(), { message: 'the server answered 404 (NoSuchKey)' });
  const started = performance.now();
  t.match(await ask(), { message: 'the server answered 500' });
  t.ok(performance.now() - started < 2000, 'a body that never ends is not waited for');
  t.equal(await ask(), 'ab', 'a new connection after the refusals');
  t.equal(server.connections(), 4);
});
