// HttpOrigin against a real nginx, directly and through the fault proxy (test/helpers/).

import { randomBytes } from 'node:crypto';
import { utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { HttpOrigin, type OriginOptions, parseContentRange, preconditionHeaders } from '../../lib/remote/http-origin.js';
import { startFaultProxy } from '../helpers/fault-proxy.js';
import { requireNginx, settledAccessLog, startNginx } from '../helpers/nginx.js';

const SIZE = 1024 * 1024 + 123;

function options(more: Partial<OriginOptions> = {}): OriginOptions & { retried: string[] } {
  const retried: string[] = [];
  return { timeoutMs: 5000, retries: 2, onRetry: (m) => retried.push(m), retried, ...more };
}

t.test('Content-Range and preconditions', async (t) => {
  t.same(parseContentRange('bytes 0-0/10'), { first: 0, last: 0, total: 10 });
  t.same(parseContentRange(' bytes 5-9/10 '), { first: 5, last: 9, total: 10 });
  for (const bad of [undefined, '', 'bytes */10', 'bytes 5-4/10', 'bytes 0-10/10', 'items 0-1/2', 'bytes 0-1/x']) {
    t.equal(parseContentRange(bad), undefined, `${bad} is refused`);
  }
  t.same(preconditionHeaders({ size: 1, etag: '"abc"', lastModified: 'x' }), { 'If-Match': '"abc"' });
  t.same(
    preconditionHeaders({ size: 1, etag: 'W/"abc"', lastModified: 'x' }),
    { 'If-Unmodified-Since': 'x' },
    'a weak ETag cannot be matched',
  );
  t.same(preconditionHeaders({ size: 1 }), {});
});

/** A random image served by nginx, behind the fault proxy, and an origin opened on it. */
async function originBehindProxy(t: Test, more: Partial<OriginOptions> = {}) {
  const root = t.testdir();
  const image = randomBytes(SIZE);
  writeFileSync(join(root, 'golden.raw'), image);
  const nginx = await startNginx(t, { root });
  const proxy = await startFaultProxy(t, nginx.origin);
  const origin = await HttpOrigin.probe(new URL(proxy.url('/golden.raw')), options(more));
  t.teardown(() => origin.close());
  return { image, proxy, origin };
}

if (requireNginx(t)) {
  t.test('probe and fetch against nginx', async (t) => {
    const root = t.testdir();
    const image = randomBytes(SIZE);
    writeFileSync(join(root, 'golden.raw'), image);
    const nginx = await startNginx(t, { root });
    const url = new URL(nginx.url('golden.raw'));
    const origin = await HttpOrigin.probe(url, options());
    t.teardown(() => origin.close());
    t.equal(origin.identity.size, SIZE);
    t.match(origin.identity.etag, /^"[0-9a-f]+-[0-9a-f]+"$/, "nginx's strong ETag");
    t.type(origin.identity.lastModified, 'string');
    t.same(await origin.fetch(1000, 70_000), image.subarray(1000, 71_000));
    t.same(await origin.fetch(SIZE - 5, 5), image.subarray(SIZE - 5), 'the last bytes');
    t.same(await origin.fetch(7, 0), Buffer.alloc(0), 'nothing asked, nothing sent');
    const log = await settledAccessLog(nginx);
    t.equal(log.length, 3, 'a probe and two fetches');
    t.same(
      log.map((e) => [e.range, e.status, e.bodyBytesSent]),
      [
        ['bytes=0-0', 206, 1],
        ['bytes=1000-70999', 206, 70_000],
        [`bytes=${SIZE - 5}-${SIZE - 1}`, 206, 5],
      ],
    );
    t.equal(log[1]?.ifMatch, origin.identity.etag, 'each fetch carries If-Match');
    t.equal(log[2]?.connection, log[1]?.connection, 'one kept-alive connection');
    t.same(origin.counters, { requests: 3, bytes: 1 + 70_000 + 5, retries: 0, failures: 0 });

    // The image replaced on the server: refused at once, never retried, never served.
    writeFileSync(join(root, 'golden.raw'), randomBytes(SIZE));
    utimesSync(join(root, 'golden.raw'), new Date(), new Date(Date.now() + 5000));
    await t.rejects(origin.fetch(0, 10), { code: 'ESTALE', message: /image on the server changed since it was opened/ });
    t.equal(origin.counters.retries, 0);

    await t.rejects(HttpOrigin.probe(new URL(nginx.url('missing.raw')), options()), {
      code: 'ENOENT',
      message: `${nginx.url('missing.raw')}: the server answered 404`,
    });
    writeFileSync(join(root, 'empty.raw'), '');
    await t.rejects(HttpOrigin.probe(new URL(nginx.url('empty.raw')), options()), {
      code: 'EINVAL',
      message: /: the image is empty$/,
    });
  });

  t.test('faults: retried with backoff, then one clear failure; the origin is picked up again', async (t) => {
    const root = t.testdir();
    const image = randomBytes(SIZE);
    writeFileSync(join(root, 'golden.raw'), image);
    const nginx = await startNginx(t, { root });
    const proxy = await startFaultProxy(t, nginx.origin);
    const opts = options({ timeoutMs: 400, retries: 2 });
    const origin = await HttpOrigin.probe(new URL(proxy.url('/golden.raw')), opts);
    t.teardown(() => origin.close());

    for (const fault of [{ kind: 'status', status: 503 }, { kind: 'reset' }, { kind: 'truncate' }, { kind: 'hang' }] as const) {
      const before = origin.counters.retries;
      proxy.faultNext(1, fault);
      t.same(
        await origin.fetch(4096, 100_000),
        image.subarray(4096, 104_096),
        `${fault.kind} once: retried, then the right bytes`,
      );
      // A reset as the request goes out on a kept-alive connection is taken for one the server
      // had closed (nginx does so after a 412): sent again at once, not counted as a retry.
      t.equal(origin.counters.retries, before + (fault.kind === 'reset' ? 0 : 1), `${fault.kind}: retried`);
    }
    t.match(opts.retried, [
      /the server answered 503; trying again in 0.25 s/,
      /ended after|broke off/,
      /no complete answer within 0.4 s/,
    ]);
    t.equal(opts.retried.length, 3);

    proxy.setFault({ kind: 'status', status: 502 });
    await t.rejects(origin.fetch(0, 10), {
      code: 'EIO',
      message: `${proxy.url('/golden.raw')} bytes 0-9: the server answered 502 (after 3 tries)`,
    });
    proxy.setFault({ kind: 'status', status: 403 });
    const retries = origin.counters.retries;
    await t.rejects(origin.fetch(0, 10), { message: /answered 403$/ }, 'a 4xx is not retried');
    t.equal(origin.counters.retries, retries);
    proxy.setFault({ kind: 'none' });

    await proxy.goDown();
    await t.rejects(origin.fetch(0, 10), { code: 'ECONNREFUSED', message: /after 3 tries/ });
    await proxy.comeBack();
    t.same(await origin.fetch(0, 10), image.subarray(0, 10), 'back: served again');
    t.equal(origin.counters.failures, 3);
  });

  t.test('fetches waiting for a connection join adjacent waiting ones: one request, each caller its bytes', async (t) => {
    const { image, proxy, origin } = await originBehindProxy(t);
    // Every answer held back a moment, so the later fetches find every connection busy.
    proxy.setFault({ kind: 'delay', ms: 200 });
    const piece = 16 * 1024;
    const before = origin.counters.requests;
    // ORIGIN_CONNECTIONS (8) go out at once, one piece each, far apart; then 24 pieces in
    // three runs of 8 adjacent ones, each run asked in a shuffled order, and one piece alone.
    const apart = Array.from({ length: 8 }, (_, i) => 40 * piece + i * 2 * piece);
    const runs = [0, 10, 20].map((first) => [3, 0, 7, 1, 6, 2, 5, 4].map((i) => (first + i) * piece));
    const alone = 60 * piece;
    const asked = [...apart, ...runs.flat(), alone];
    const bodies = await Promise.all(asked.map((offset) => origin.fetch(offset, piece)));
    asked.forEach((offset, i) => {
      t.ok(bodies[i]?.equals(image.subarray(offset, offset + piece)), `the bytes at ${offset}`);
    });
    // A run joins only while its pieces are adjacent to the waiting batch's ends: the shuffled
    // order splits some runs, so fewer than 32 requests, and at least 8 + 3 + 1.
    const requests = origin.counters.requests - before;
    t.ok(requests < asked.length, `${requests} requests for ${asked.length} fetches`);
    t.ok(requests >= 12, `${requests} requests: no more joined than adjacent`);
    t.equal(origin.counters.bytes, 1 + asked.length * piece, 'each byte asked once');
    proxy.setFault({ kind: 'none' });
  });

  t.test('waiting fetches with the same start or end: each served its bytes', async (t) => {
    const { image, proxy, origin } = await originBehindProxy(t);
    proxy.faultNext(8, { kind: 'delay', ms: 200 });
    const busy = Array.from({ length: 8 }, (_, i) => origin.fetch(512 * 1024 + i * 8192, 4096));
    // While every connection is busy: two batches start at 0, two end at 64 KiB, and later
    // fetches join whichever the maps name.
    const asked: Array<[number, number]> = [
      [0, 4096],
      [0, 8192],
      [8192, 4096],
      [4096, 61440],
      [32768, 32768],
      [65536, 4096],
    ];
    const bodies = await Promise.all([...asked.map(([at, n]) => origin.fetch(at, n)), ...busy]);
    for (const [i, [at, n]] of asked.entries()) t.ok(bodies[i]?.equals(image.subarray(at, at + n)), `bytes ${at}+${n}`);
  });

  t.test('bodies come from a pool: given back by release(), a joined one once every caller has', async (t) => {
    const { image, proxy, origin } = await originBehindProxy(t);
    const piece = 64 * 1024;

    const a = await origin.fetch(0, piece);
    origin.release(a);
    origin.release(a); // a second release is ignored
    const b = await origin.fetch(piece, piece);
    const c = await origin.fetch(2 * piece, piece);
    t.equal(b.buffer, a.buffer, 'a released buffer is used again');
    t.not(c.buffer, a.buffer, 'and only once');
    t.ok(b.equals(image.subarray(piece, 2 * piece)) && c.equals(image.subarray(2 * piece, 3 * piece)), 'with the new bytes');
    origin.release(Buffer.alloc(piece)); // not one of its buffers: ignored

    // Two adjacent fetches joined behind eight busy connections share one 128 KiB body.
    proxy.faultNext(8, { kind: 'delay', ms: 200 });
    const busy = Array.from({ length: 8 }, (_, i) => origin.fetch(8 * piece + i * 8192, 4096));
    const [m1, m2] = await Promise.all([origin.fetch(0, piece), origin.fetch(piece, piece), ...busy]);
    t.equal(m1?.buffer, m2?.buffer, 'joined: one body');
    const shared = m1?.buffer;
    origin.release(m1 as Buffer);
    const d = await origin.fetch(0, 2 * piece);
    t.not(d.buffer, shared, 'not given back while one caller still holds its part');
    t.ok(m2?.equals(image.subarray(piece, 2 * piece)), 'and that part is intact');
    origin.release(m2 as Buffer);
    const e = await origin.fetch(2 * piece, 2 * piece);
    t.equal(e.buffer, shared, 'given back once both have');
    t.ok(e.equals(image.subarray(2 * piece, 4 * piece)));
  });

  t.test('a joined request that fails fails every fetch in it, and only those', async (t) => {
    const { image, proxy, origin } = await originBehindProxy(t, { retries: 0 });
    const piece = 4096;
    // Eight requests hold every connection (delayed), then two adjacent fetches wait and join;
    // the joined request (the ninth) is answered 404.
    proxy.faultNext(8, { kind: 'delay', ms: 200 });
    proxy.faultNext(1, { kind: 'status', status: 404 });
    const busy = Array.from({ length: 8 }, (_, i) => origin.fetch(100 * piece + i * 2 * piece, piece));
    const joined = [origin.fetch(0, piece), origin.fetch(piece, piece)];
    const results = await Promise.allSettled([...busy, ...joined]);
    t.same(
      results.slice(0, 8).map((r) => r.status),
      Array(8).fill('fulfilled'),
      'the fetches sent at once are served',
    );
    for (const r of results.slice(8))
      t.match(r, { status: 'rejected', reason: { code: 'ENOENT', message: /bytes 0-8191: the server answered 404/ } });
    t.same(await origin.fetch(0, piece), image.subarray(0, piece), 'the next fetch of those bytes works');
  });

  t.test('a redirect is not followed', async (t) => {
    const root = t.testdir({ sub: {} });
    const nginx = await startNginx(t, { root });
    // nginx answers a directory named without its slash with a 301 to the slashed one.
    await t.rejects(HttpOrigin.probe(new URL(`${nginx.origin}/sub`), options()), {
      code: 'EPROTO',
      message: /answered 301 \(a redirect\): give the final URL$/,
    });
  });
}
