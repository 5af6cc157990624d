// RemoteBase (through openRemoteBase) against a real nginx: reads, single flight, read-ahead,
// prefetch, the cache across restarts and past its size, and failures that stay with a read.

import { randomBytes } from 'node:crypto';
import { readdirSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Test } from 'tap';
import t from 'tap';
import { cacheStem, openRemoteBase, remoteFingerprint } from '../../lib/remote/open-remote-base.js';
import type { RemoteBase } from '../../lib/remote/remote-base.js';
import { RemoteBaseElsewhere } from '../../lib/remote/remote-base-elsewhere.js';
import { CACHE_BLOCK_SIZE, MIN_CACHE_SIZE, type RemoteOptions } from '../../lib/remote/remote-options.js';
import { startFaultProxy } from '../helpers/fault-proxy.js';
import { type Nginx, requireNginx, settledAccessLog, startNginx } from '../helpers/nginx.js';

const BS = CACHE_BLOCK_SIZE;
const SIZE = 20 * 1024 * 1024 + 5000;

interface Served {
  readonly nginx: Nginx;
  readonly image: Buffer;
  readonly root: string;
  readonly cacheDir: string;
}

async function serveImage(t: Test, size = SIZE): Promise<Served> {
  const dir = t.testdir({ www: {} });
  const root = join(dir, 'www');
  const image = randomBytes(size);
  writeFileSync(join(root, 'golden.raw'), image);
  return { nginx: await startNginx(t, { root }), image, root, cacheDir: join(dir, 'cache') };
}

async function open(
  t: Test,
  url: string,
  options: Omit<RemoteOptions, 'cacheHeldBySibling'>,
  messages: string[] = [],
): Promise<RemoteBase> {
  const base = await openRemoteBase(url, options, { warn: (m) => messages.push(`warn: ${m}`), info: (m) => messages.push(m) });
  t.teardown(() => base.close());
  return base;
}

async function read(base: RemoteBase, offset: number, length: number): Promise<Buffer> {
  const dest = Buffer.alloc(length);
  await base.read(offset, dest);
  return dest;
}

/** The range requests nginx saw after the probe. */
async function ranges(nginx: Nginx): Promise<string[]> {
  return (await settledAccessLog(nginx)).map((e) => e.range).filter((r) => r !== 'bytes=0-0');
}

t.test('identity and cache names', async (t) => {
  const a = remoteFingerprint({ size: 10, etag: '"x"' });
  t.match(a, /^[0-9a-f]{64}$/);
  t.not(a, remoteFingerprint({ size: 11, etag: '"x"' }), 'the size counts');
  t.not(a, remoteFingerprint({ size: 10, etag: '"y"' }), 'the ETag counts');
  t.not(a, remoteFingerprint({ size: 10, etag: '"x"', lastModified: 'Mon' }), 'Last-Modified counts');
  t.match(cacheStem(new URL('https://u:p@h/a/golden%20image.raw?x=1')), /^golden_20image.raw-[0-9a-f]{16}$/);
  t.equal(
    cacheStem(new URL('https://u:p@h/g.raw')),
    cacheStem(new URL('https://h/g.raw')),
    'credentials do not make another cache',
  );
  t.not(cacheStem(new URL('https://h/a/g.raw')), cacheStem(new URL('https://h/b/g.raw')));
});

if (requireNginx(t)) {
  t.test('reads are exact, fetched once and kept across a restart', async (t) => {
    const { nginx, image, cacheDir } = await serveImage(t);
    const url = nginx.url('golden.raw');
    const base = await open(t, url, { cacheDir });
    t.equal(base.size, SIZE);
    t.equal(base.path, url);
    t.same(await read(base, 0, 1024 * 1024), image.subarray(0, 1024 * 1024), 'the first MiB');
    t.same(await ranges(nginx), ['bytes=0-1048575'], 'the missing blocks of one read in one request');
    for (const [offset, length] of [
      [BS - 10, 20],
      [3 * BS + 7, 2 * BS],
      [SIZE - 5000, 5000],
      [SIZE - 70_000, 70_000],
    ] as const) {
      t.same(await read(base, offset, length), image.subarray(offset, offset + length), `${length} bytes at ${offset}`);
    }
    t.same(base.extents ? await base.extents(0, SIZE) : [], [{ length: SIZE, state: 'base', depth: 1 }]);
    await base.settled();
    const stats = base.stats;
    await base.close();
    await t.rejects(read(base, 0, 1), { code: 'ESHUTDOWN' });

    const before = (await settledAccessLog(nginx)).length;
    const again = await open(t, url, { cacheDir });
    t.same(await read(again, 0, 1024 * 1024), image.subarray(0, 1024 * 1024));
    t.same(await read(again, SIZE - 70_000, 70_000), image.subarray(SIZE - 70_000));
    t.equal((await settledAccessLog(nginx)).length, before + 1, 'after a restart: the probe only, every block from the cache');
    t.equal(again.stats.cachedBlocks, stats.cachedBlocks);
  });

  t.test('single flight: many readers of one block cause one fetch', async (t) => {
    const { nginx, image, cacheDir } = await serveImage(t);
    const base = await open(t, nginx.url('golden.raw'), { cacheDir });
    const offsets = Array.from({ length: 16 }, (_, i) => 5 * BS + i * 4096);
    const results = await Promise.all(offsets.map((offset) => read(base, offset, 1000)));
    for (const [i, offset] of offsets.entries()) t.same(results[i], image.subarray(offset, offset + 1000));
    t.same(await ranges(nginx), [`bytes=${5 * BS}-${6 * BS - 1}`]);
    t.equal(base.stats.fetches, 2, 'the probe and one fetch');
  });

  t.test('a sequential stream is read ahead by one read of its length', async (t) => {
    const { nginx, image, cacheDir } = await serveImage(t);
    const base = await open(t, nginx.url('golden.raw'), { cacheDir });
    t.same(await read(base, 0, BS), image.subarray(0, BS));
    t.same(await ranges(nginx), [`bytes=0-${BS - 1}`], 'a lone read: no read-ahead');
    await read(base, BS, BS);
    // The stream goes on: the blocks of its next read come without being asked.
    await base.settled();
    t.same(await ranges(nginx), [`bytes=0-${BS - 1}`, `bytes=${BS}-${2 * BS - 1}`, `bytes=${2 * BS}-${3 * BS - 1}`]);
    const misses = base.stats.misses;
    t.same(await read(base, 2 * BS, BS), image.subarray(2 * BS, 3 * BS));
    t.equal(base.stats.misses, misses, 'the read-ahead block was a hit');
    await base.settled();
    t.equal((await ranges(nginx)).at(-1), `bytes=${3 * BS}-${4 * BS - 1}`, 'and the next one is on its way');
    // A read twice as long reads ahead twice as far, never past READ_AHEAD_MAX.
    await read(base, 3 * BS, 2 * BS);
    await base.settled();
    t.equal((await ranges(nginx)).at(-1), `bytes=${5 * BS}-${7 * BS - 1}`);
    await read(base, 5 * BS, 4 * 1024 * 1024);
    await base.settled();
    const after = 5 * BS + 4 * 1024 * 1024;
    // nginx logs in the order the answers ended: the 1 MiB may end before the 4 MiB.
    t.ok((await ranges(nginx)).includes(`bytes=${after}-${after + 1024 * 1024 - 1}`), 'a 4 MiB read reads 1 MiB ahead');
  });

  t.test('prefetch fills the cache in the background, then says so', async (t) => {
    const { nginx, image, cacheDir } = await serveImage(t);
    const messages: string[] = [];
    const base = await open(t, nginx.url('golden.raw'), { cacheDir, prefetch: true }, messages);
    for (let i = 0; i < 500 && !messages.some((m) => m.includes('prefetch')); i++) await new Promise((r) => setTimeout(r, 20));
    t.match(messages, [/^prefetch of .*golden.raw done: 20.0 MiB fetched in [\d.]+ s$/]);
    t.equal(base.stats.cachedBlocks, Math.ceil(SIZE / BS));
    const log = await settledAccessLog(nginx);
    t.equal(
      log.reduce((sum, e) => sum + e.bodyBytesSent, 0),
      SIZE + 1,
      'every byte fetched once (and the probe)',
    );
    t.same(await read(base, 12345, 1_000_000), image.subarray(12345, 1_012_345));
    t.equal((await settledAccessLog(nginx)).length, log.length, 'then served from the cache');
  });

  t.test('a cache smaller than the image evicts, and every read stays exact', async (t) => {
    const { nginx, image, cacheDir } = await serveImage(t);
    const base = await open(t, nginx.url('golden.raw'), { cacheDir, cacheSize: MIN_CACHE_SIZE });
    t.equal(base.stats.cacheSlots, MIN_CACHE_SIZE / BS);
    for (let offset = 0; offset < SIZE; offset += 1024 * 1024) {
      const length = Math.min(1024 * 1024, SIZE - offset);
      t.same(await read(base, offset, length), image.subarray(offset, offset + length), `MiB ${offset >> 20}`);
    }
    await base.settled();
    // An eviction frees an eighth of the slots at once (one flush of the map for them all).
    const slots = MIN_CACHE_SIZE / BS;
    const held = base.stats.cachedBlocks;
    t.ok(
      held <= slots && held >= slots - slots / 8,
      `full less at most one eviction's eighth, never past it (${held} of ${slots})`,
    );
    const fetched = base.stats.bytesFetched;
    t.same(await read(base, 0, BS), image.subarray(0, BS), 'the first block, evicted since, fetched again');
    t.ok(base.stats.bytesFetched > fetched);
  });

  t.test('a failed fetch fails its read only; the next read tries again', async (t) => {
    const { nginx, image, cacheDir } = await serveImage(t);
    const proxy = await startFaultProxy(t, nginx.origin);
    const messages: string[] = [];
    const base = await open(t, proxy.url('/golden.raw'), { cacheDir, retries: 1, timeoutMs: 500 }, messages);
    t.same(await read(base, 0, BS), image.subarray(0, BS));
    await proxy.goDown();
    await t.rejects(read(base, 10 * BS, 100), {
      code: 'EIO',
      message: /bytes 655360-720895: connect ECONNREFUSED .*\(after 2 tries\)/,
    });
    t.same(await read(base, 0, BS), image.subarray(0, BS), 'a cached block reads on');
    t.match(messages, [/^warn: .*trying again in 0.25 s$/]);
    await proxy.comeBack();
    t.same(await read(base, 10 * BS, 100), image.subarray(10 * BS, 10 * BS + 100), 'the origin back: served');
    proxy.faultNext(2, { kind: 'status', status: 500 });
    await t.rejects(read(base, 12 * BS, 100), { code: 'EIO', message: /answered 500 \(after 2 tries\)/ });
    t.equal(base.stats.failures, 2);
  });

  t.test('the image replaced on the server: new blocks fail (EIO), and a restart starts a new cache', async (t) => {
    const { nginx, image, root, cacheDir } = await serveImage(t, 4 * 1024 * 1024);
    const messages: string[] = [];
    const base = await open(t, nginx.url('golden.raw'), { cacheDir }, messages);
    t.same(await read(base, 0, BS), image.subarray(0, BS));
    const replaced = randomBytes(4 * 1024 * 1024);
    writeFileSync(join(root, 'golden.raw'), replaced);
    utimesSync(join(root, 'golden.raw'), new Date(), new Date(Date.now() + 10_000));
    await t.rejects(read(base, 20 * BS, 10), { code: 'EIO', message: /the image on the server changed since it was opened/ });
    t.same(await read(base, 0, BS), image.subarray(0, BS), 'what the cache holds is the version opened');
    const fingerprint = base.identity.fingerprint;
    await base.close();
    const after = await open(t, nginx.url('golden.raw'), { cacheDir }, messages);
    t.not(after.identity.fingerprint, fingerprint, 'another identity: overlays of the old one are refused');
    t.match(
      messages.filter((m) => m.startsWith('warn')),
      [/made for another image version or size; starting empty/],
    );
    t.match(
      messages[0],
      /^remote base http:.*: fetched 0.06 MiB in 2 requests for 0.07 MiB read; 0 retried, 1 failed; cache holds 0.06 MiB of 4.00 MiB$/,
      'the first one said what it did as it closed',
    );
    t.same(await read(after, 0, BS), replaced.subarray(0, BS));
  });

  t.test('one cache, one process: opened twice here it is shared; another process is refused', async (t) => {
    const { nginx, image, cacheDir } = await serveImage(t, 1024 * 1024);
    const quiet = { warn: () => undefined, info: () => undefined };
    const first = await openRemoteBase(nginx.url('golden.raw'), { cacheDir }, quiet);
    const second = await openRemoteBase(nginx.url('golden.raw'), { cacheDir }, quiet);
    t.equal(second, first, 'the same base, shared (two exports, or a reload)');
    await first.close();
    t.same(await read(second, 0, 100), image.subarray(0, 100), 'open until its last owner closes it');
    await second.close();
    t.ok(second.closed);
    const third = await openRemoteBase(nginx.url('golden.raw'), { cacheDir }, quiet);
    t.not(third, first, 'closed by all: opened afresh');
    await third.close();

    // Another process's lock (pid 1 always runs).
    const lock = readdirSync(cacheDir)
      .find((name) => name.endsWith('.data'))
      ?.replace(/\.data$/, '.lock');
    writeFileSync(join(cacheDir, lock ?? 'none'), '1\n');
    await t.rejects(openRemoteBase(nginx.url('golden.raw'), { cacheDir }, quiet), {
      code: 'EBUSY',
      message: /^cannot open base image http:\/\/127\.0\.0\.1:\d+\/golden\.raw: block cache .* is in use by process 1 /,
    });
    // A worker of `serve --workers N` whose sibling holds the lock: the size and identity only.
    const asked: number[] = [];
    const siblings = {
      cacheDir,
      cacheHeldBySibling: (pid: number) => {
        asked.push(pid);
        return true;
      },
    };
    const elsewhere = await openRemoteBase(nginx.url('golden.raw'), siblings, quiet);
    t.ok(elsewhere instanceof RemoteBaseElsewhere, 'held by a sibling: a RemoteBaseElsewhere');
    t.same(asked, [1], 'asked about the holder the lock names');
    t.same(elsewhere.identity, third.identity, 'with the identity the origin gives');
    t.equal(
      (elsewhere as RemoteBaseElsewhere).cacheLock,
      join(cacheDir, lock ?? 'none'),
      'and the lock file that names the holder',
    );
    await t.rejects(elsewhere.read(0, Buffer.alloc(1)), { code: 'EAGAIN' }, 'nothing is read through it');
    await t.rejects(openRemoteBase(nginx.url('golden.raw'), { ...siblings, cacheHeldBySibling: () => false }, quiet), {
      code: 'EBUSY',
    });
  });
}
