// `serve URL --workers 2` with nginx as the origin and real clients (doc/workers.md, "A remote
// base"): the block cache has one owner, so the worker that took its lock serves every
// connection to the export; the other hands its connections over at their GO. Both clients read
// the image through one cache (nginx sends no block twice), a named overlay on it is one
// device, and when the cache's worker is killed its replacement takes the cache over. Over TLS
// the connection cannot move: its worker relays it to the cache's.

import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { requireClients } from '../helpers/clients.js';
import { type AccessLogEntry, type Nginx, requireNginx, settledAccessLog, startNginx } from '../helpers/nginx.js';
import { describeRun, run } from '../helpers/processes.js';
import { pySession } from '../helpers/py-session.js';
import { matchStderr, type ServerProcess, startServe } from '../helpers/server-process.js';
import { libnbdPskUri, tlsFixtures } from '../helpers/tls-fixtures.js';

const MiB = 1024 * 1024;
const SIZE = 8 * MiB;
/** The probe each process opening the URL sends for its size and version. */
const PROBE = 'bytes=0-0';

/** Poll `check` every 50 ms for up to `ms`; true once it held. */
async function eventually(check: () => boolean, ms = 10_000): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end; ) {
    if (check()) return true;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return check();
}

/** Body bytes nginx sent for block fetches (every request but the probes). */
function fetchedBytes(log: readonly AccessLogEntry[]): number {
  return log.filter((e) => e.range !== PROBE).reduce((sum, e) => sum + e.bodyBytesSent, 0);
}

/** A random image served by nginx, and `serve URL --workers 2` on it with the test's cache and overlay directories. */
async function serveWithWorkers(
  t: Test,
  args: readonly string[] = [],
): Promise<{ image: Buffer; nginx: Nginx; cacheDir: string; server: ServerProcess }> {
  const dir = t.testdir({ www: {} });
  const image = randomBytes(SIZE);
  writeFileSync(join(dir, 'www', 'golden.raw'), image);
  const nginx = await startNginx(t, { root: join(dir, 'www') });
  const cacheDir = join(dir, 'cache');
  const server = await startServe(t, nginx.url('golden.raw'), [
    ...['--cache-dir', cacheDir, '--overlay-dir', join(dir, 'overlays'), '--workers', '2'],
    ...args,
  ]);
  return { image, nginx, cacheDir, server };
}

if (requireNginx(t) && requireClients(t, ['qemu-io'], true)) {
  t.test('two workers, one remote base: the worker holding the block cache serves every connection to it', async (t) => {
    const { image, nginx, cacheDir, server } = await serveWithWorkers(t);
    const workers = (): number[] => {
      const m = /serving with 2 worker processes: (\d+), (\d+)/.exec(server.stderr());
      return m === null ? [] : [Number(m[1]), Number(m[2])];
    };
    t.ok(await eventually(() => workers().length === 2), 'the primary names its two workers');
    const holder = Number(readFileSync(join(cacheDir, lockName(cacheDir)), 'utf8').trim());
    t.ok(workers().includes(holder), `one worker holds the cache's lock (${holder})`);

    const py = pySession(t);
    await py.ok({ op: 'connect', h: 'a', uri: server.uri });
    await py.ok({ op: 'connect', h: 'b', uri: server.uri });
    const reads = async (h: string): Promise<Buffer> => {
      const parts: Buffer[] = [];
      for (let at = 0; at < SIZE; at += MiB) parts.push(await py.pread(h, at, MiB));
      return Buffer.concat(parts);
    };
    t.ok((await reads('a')).equals(image), 'a reads the image');
    t.ok((await reads('b')).equals(image), 'b reads the image');
    await py.ok({ op: 'pwrite', h: 'a', offset: 0, data: Buffer.alloc(4096, 0xaa).toString('base64') });
    t.same(await py.pread('a', 0, 4096), Buffer.alloc(4096, 0xaa), 'a reads its own write');
    t.ok((await py.pread('b', 0, 4096)).equals(image.subarray(0, 4096)), "b does not see a's throwaway overlay");

    const servedBy = (): string[] => [
      ...new Set(
        [...server.stderr().matchAll(/nbd-cow\[worker (\d+)\]: conn \d+ \([^)]*\): export "golden"/g)].map((m) => m[1] as string),
      ),
    ];
    t.same(servedBy(), [String(holder)], 'both connections are served by the worker holding the cache');
    await matchStderr(t, server, /handed over to worker \d+, which holds the remote base's block cache/, 'one of them moved');
    const log = await settledAccessLog(nginx);
    t.equal(fetchedBytes(log), SIZE, 'nginx sent each byte of the image once, for both clients');
    t.equal(log.filter((e) => e.range === PROBE).length, 2, 'each worker asked for the size and version once');

    // A named overlay on the remote base: one device, in the cache's worker.
    const w = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5c 1M 64k', `${server.uri}@vm`]);
    t.equal(w.code, 0, `qemu-io writes golden@vm: ${describeRun(w)}`);
    await py.ok({ op: 'connect', h: 'c', uri: `${server.uri}@vm` });
    t.same(await py.pread('c', MiB, 65536), Buffer.alloc(65536, 0x5c), 'another connection to golden@vm reads that write');
    await py.ok({ op: 'close', h: 'c' });

    // The cache's worker dies: its replacement takes the cache over (a stale lock) and serves it.
    process.kill(holder, 'SIGKILL');
    t.ok(
      await eventually(() => new RegExp(`worker \\d+ started, replacing ${holder}`).test(server.stderr())),
      'the primary started a replacement',
    );
    let again = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x5c 1M 64k', `${server.uri}@vm`]);
    for (let tries = 0; again.code !== 0 && tries < 40; tries++) {
      // Until the replacement has taken the lock, the other worker's GO is refused ("try again").
      t.match(again.stderr + again.stdout, /try again/, `refused while the cache changes hands: ${describeRun(again)}`);
      await new Promise((resolve) => setTimeout(resolve, 250));
      again = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0x5c 1M 64k', `${server.uri}@vm`]);
    }
    t.equal(again.code, 0, `golden@vm is served again: ${describeRun(again)}`);
    t.notMatch(again.stdout, /Pattern verification failed/, 'with the write made before');
    const newHolder = Number(readFileSync(join(cacheDir, lockName(cacheDir)), 'utf8').trim());
    t.not(newHolder, holder, `another worker holds the cache now (${newHolder})`);
    await py.ok({ op: 'connect', h: 'd', uri: server.uri });
    t.ok((await py.pread('d', 3 * MiB, MiB)).equals(image.subarray(3 * MiB, 4 * MiB)), 'a new client reads the image');
    await py.end();
    t.equal((await server.stop()).code, 0, 'SIGTERM: the primary exits 0');
  });
}

if (requireNginx(t) && requireClients(t, ['openssl'], true)) {
  t.test('over TLS a connection cannot move: the worker with its TLS session relays it to the cache holder', async (t) => {
    const tls = await tlsFixtures();
    const { image, nginx, server } = await serveWithWorkers(t, ['--tls', 'require', '--tls-psk', tls.pskFile]);
    const py = pySession(t);
    // The primary gives the second connection to the other worker (fewest connections).
    await py.ok({ op: 'connect', h: 'a', uri: libnbdPskUri(server.uri, tls.pskAlice) });
    await py.ok({ op: 'connect', h: 'b', uri: libnbdPskUri(server.uri, tls.pskBob) });
    for (const h of ['a', 'b']) {
      t.ok((await py.pread(h, 2 * MiB, MiB)).equals(image.subarray(2 * MiB, 3 * MiB)), `${h} reads the image`);
    }
    await matchStderr(
      t,
      server,
      /relayed to worker \d+, which holds the remote base's block cache \(the TLS session stays here\)/,
    );
    const log = await settledAccessLog(nginx);
    t.ok(fetchedBytes(log) <= 2 * MiB, `the MiB both read was fetched once, with its read-ahead (${fetchedBytes(log)} bytes)`);
    await py.end();
    t.equal((await server.stop()).code, 0);
  });
}

/** The one `.lock` file in the cache directory. */
function lockName(cacheDir: string): string {
  const locks = readdirSync(cacheDir).filter((f) => f.endsWith('.lock'));
  if (locks.length !== 1) throw new Error(`expected one lock file in ${cacheDir}, found ${locks.join(', ') || 'none'}`);
  return locks[0] as string;
}
