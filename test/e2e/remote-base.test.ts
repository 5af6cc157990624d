// `nbd-cow serve http://HOST/PATH/golden.raw` with real clients and a real nginx (lib/remote/):
// throwaway and named overlays over the remote base read it byte for byte, through the block
// cache kept across restarts; block status is the local file's; an image replaced on the server
// refuses the old named overlays and empties the cache; faults of the origin (down, 503, no
// answer) fail only the reads that need it; --prefetch fetches the image once; concurrent
// clients fetch each byte once; `run` and a configuration file take a URL; the refusals are one
// line each. The URL's user and password are never shown. The access log of nginx says what was
// fetched.

import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { sha256, sha256File } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { startFaultProxy } from '../helpers/fault-proxy.js';
import { listDir } from '../helpers/files.js';
import { type AccessLogEntry, type Nginx, requireNginx, startNginx } from '../helpers/nginx.js';
import { describeRun, ROOT, type RunResult, run } from '../helpers/processes.js';
import { pySession } from '../helpers/py-session.js';
import { matchStderr, runCli, type ServerProcess, startServe, startServeConfig } from '../helpers/server-process.js';
import { waitFor } from '../helpers/wait.js';

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;
/** The one request opening a remote base makes: its first byte (size and ETag). */
const PROBE = 'bytes=0-0';
const b64 = (b: Buffer): string => b.toString('base64');

/** An image of random bytes, served by nginx as /golden.raw. */
interface Site {
  readonly dir: string;
  /** The image file nginx serves. */
  readonly path: string;
  readonly image: Buffer;
  readonly nginx: Nginx;
  /** The image's URL, without credentials. */
  readonly url: string;
  readonly cacheDir: string;
  readonly overlays: string;
}

async function serveImage(t: Test, size = SIZE): Promise<Site> {
  const dir = t.testdir({ www: {} });
  const path = join(dir, 'www', 'golden.raw');
  const image = randomBytes(size);
  writeFileSync(path, image);
  const nginx = await startNginx(t, { root: join(dir, 'www') });
  return {
    dir,
    path,
    image,
    nginx,
    url: nginx.url('golden.raw'),
    cacheDir: join(dir, 'cache'),
    overlays: join(dir, 'overlays'),
  };
}

/** `serve URL -p 0` with the site's cache and overlay directories. */
function serveRemote(t: Test, site: Site, url = site.url, args: readonly string[] = []): Promise<ServerProcess> {
  return startServe(t, url, ['--cache-dir', site.cacheDir, '--overlay-dir', site.overlays, ...args]);
}

/** `url` with a user and password nginx ignores (basic authentication is sent, never checked). */
function withCredentials(url: string): string {
  return url.replace(/^http:\/\//, 'http://user:secret@');
}

/** qemu-io on `uri` (raw) running `commands` in order. */
function qemuIo(uri: string, ...commands: string[]): Promise<RunResult> {
  return run('qemu-io', ['-f', 'raw', ...commands.flatMap((c) => ['-c', c]), uri]);
}

/** The first `bytes=FIRST-LAST` of a Range header, as numbers. */
function parseRange(range: string): { first: number; last: number } {
  const m = /^bytes=(\d+)-(\d+)$/.exec(range);
  if (m === null) throw new Error(`not a byte range: ${range}`);
  return { first: Number(m[1]), last: Number(m[2]) };
}

function bodyBytes(log: readonly AccessLogEntry[]): number {
  return log.reduce((sum, e) => sum + e.bodyBytesSent, 0);
}

/** The ranges (not the probe) that overlap another one, as "a-b × c-d". */
function overlaps(log: readonly AccessLogEntry[]): string[] {
  const ranges = log
    .filter((e) => e.range !== PROBE)
    .map((e) => parseRange(e.range))
    .sort((a, b) => a.first - b.first);
  const found: string[] = [];
  for (let i = 1; i < ranges.length; i++) {
    const prev = ranges[i - 1] as { first: number; last: number };
    const cur = ranges[i] as { first: number; last: number };
    if (cur.first <= prev.last) found.push(`${prev.first}-${prev.last} × ${cur.first}-${cur.last}`);
  }
  return found;
}

/** Everything the server writes on stdout from now on (its URI line was already read). */
function laterStdout(server: ServerProcess): () => string {
  let out = '';
  server.child.stdout?.setEncoding('utf8').on('data', (s: string) => (out += s));
  return () => out;
}

/** `image` with `data` written at `offset` (a copy). */
function patched(image: Buffer, ...writes: Array<[offset: number, data: Buffer]>): Buffer {
  const copy = Buffer.from(image);
  for (const [offset, data] of writes) data.copy(copy, offset);
  return copy;
}

/** The bytes of qemu-io's `read -v` hex dump (`OFFSET:  xx xx … ascii` lines). */
function hexDump(output: string): Buffer {
  const hex = [...output.matchAll(/^[0-9a-f]{8}: {2}((?:[0-9a-f]{2} )+)/gm)].map((m) => (m[1] ?? '').replace(/ /g, '')).join('');
  return Buffer.from(hex, 'hex');
}

interface QemuIoSession {
  /** Run one command; resolves with what it printed on stdout, once qemu-io prompts again. */
  send(command: string): Promise<string>;
  stderr(): string;
  /** `quit`, then its exit status. */
  quit(): Promise<number | null>;
}

const PROMPT = 'qemu-io> ';

/**
 * One qemu-io process (one NBD connection, so one overlay) fed commands on stdin one at a time:
 * its connection stays open between them, while other clients act. Killed in t.teardown.
 */
async function qemuIoSession(t: Test, uri: string): Promise<QemuIoSession> {
  const child: ChildProcess = spawn('qemu-io', ['-f', 'raw', uri], { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout?.setEncoding('utf8').on('data', (s: string) => (out += s));
  child.stderr?.setEncoding('utf8').on('data', (s: string) => (err += s));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
  });
  const gone = (): boolean => child.exitCode !== null || child.signalCode !== null;
  const promptAfter = async (from: number): Promise<number> => {
    await waitFor(() => out.indexOf(PROMPT, from) >= 0 || gone(), `a qemu-io prompt (stderr: ${err})`, 30_000);
    const at = out.indexOf(PROMPT, from);
    if (at < 0) throw new Error(`qemu-io exited (${child.exitCode}): ${err}`);
    return at;
  };
  let mark = (await promptAfter(0)) + PROMPT.length;
  return {
    send: async (command) => {
      const from = mark;
      child.stdin?.write(`${command}\n`);
      const at = await promptAfter(from);
      mark = at + PROMPT.length;
      return out.slice(from, at);
    },
    stderr: () => err,
    quit: () => {
      child.stdin?.end('quit\n');
      return exited;
    },
  };
}

if (requireNginx(t) && requireClients(t, ['qemu-io', 'qemu-img', 'nbdinfo', 'nbdcopy'], true)) {
  t.test('throwaway overlays over a remote base: the image byte for byte, private writes, no password shown', async (t) => {
    const site = await serveImage(t);
    // -v: the debug log too (every request), which must not show the password either.
    const server = await serveRemote(t, site, withCredentials(site.url), ['-v']);
    const stdout = laterStdout(server);
    t.match(server.uri, /^nbd:\/\/127\.0\.0\.1:\d+\/golden$/, 'the export is named after the file, not the URL');

    const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', site.path, server.uri]);
    t.equal(cmp.code, 0, `qemu-img compare: the export is the image (${describeRun(cmp)})`);
    t.match(cmp.stdout, /Images are identical/);

    // Connection a (qemu-io, held open) writes; connection b (libnbd) does not see it, and the reverse.
    const a = await qemuIoSession(t, server.uri);
    const py = pySession(t);
    await py.ok({ op: 'connect', h: 'b', uri: server.uri });
    t.match(await a.send('write -P 0x55 1M 1M'), /wrote 1048576\/1048576 bytes at offset 1048576/);
    t.same(
      await py.pread('b', MiB - 100, MiB + 200),
      site.image.subarray(MiB - 100, 2 * MiB + 100),
      "b reads the base, not a's write",
    );
    await py.ok({ op: 'pwrite', h: 'b', offset: 4 * MiB, data: b64(Buffer.alloc(4096, 0x66)) });
    const own = await a.send('read -P 0x55 1M 1M');
    t.match(own, /read 1048576\/1048576 bytes at offset 1048576/, 'a reads its own write');
    t.notMatch(own, /verification failed/);
    t.same(hexDump(await a.send('read -v 4M 16')), site.image.subarray(4 * MiB, 4 * MiB + 16), "a does not see b's write");
    t.same(await py.pread('b', 4 * MiB, 4096), Buffer.alloc(4096, 0x66), 'b reads its own write');
    t.equal(await a.quit(), 0, `qemu-io session (stderr: ${a.stderr()})`);
    await py.ok({ op: 'close', h: 'b' });
    t.equal(await py.end(), 0);

    const info = await run('nbdinfo', ['--json', server.uri]);
    t.equal(info.code, 0, describeRun(info));
    const exp = (JSON.parse(info.stdout) as { exports: Array<Record<string, unknown>> }).exports[0] ?? {};
    t.match(exp, {
      'export-name': 'golden',
      'export-size': SIZE,
      description: 'golden.raw with a private copy-on-write overlay',
    });
    t.notMatch(info.stdout, /secret/, "nbdinfo's output shows no password");

    t.equal((await server.stop()).code, 0);
    t.match(server.stderr(), `remote base ${site.url}: fetched`, 'the log names the URL (at stop, with its counts)…');
    t.notMatch(server.stderr(), /secret/, '…and never shows the password');
    t.notMatch(`${server.uri}\n${stdout()}`, /secret/, "the server's stdout shows no password");
    t.notMatch(listDir(site.cacheDir).join('\n'), /secret|user/, 'nor do the cache file names');
    t.same(readFileSync(site.path), site.image, 'the image on the server is unchanged');
  });

  t.test('a named overlay on a remote base survives a restart; the second server reads the base from the cache', async (t) => {
    const site = await serveImage(t);
    let server = await serveRemote(t, site);
    const a5 = Buffer.alloc(64 * 1024, 0xa5);
    const x5a = Buffer.alloc(3000, 0x5a);
    const w = await qemuIo(`${server.uri}@alice`, 'write -P 0xa5 1M 64k', 'write -P 0x5a 5000 3000');
    t.equal(w.code, 0, describeRun(w));
    const expected = patched(site.image, [MiB, a5], [5000, x5a]);
    // One whole read: every block of the base is fetched (and cached) by the first server.
    const py = pySession(t);
    await py.ok({ op: 'connect', h: 'x', uri: `${server.uri}@alice` });
    t.equal((await py.ok({ op: 'sha256', h: 'x' })).sha256, sha256(expected), 'alice: the writes on the image');
    await py.ok({ op: 'close', h: 'x' });
    t.equal((await server.stop()).code, 0, 'SIGTERM: exit 0');
    t.same(listDir(site.overlays), ['named-golden@alice.cow'], 'the named overlay is kept');
    const firstServer = await site.nginx.accessLog();
    t.equal(bodyBytes(firstServer), SIZE + 1, 'the first server fetched the image once (and the probe byte)');

    server = await serveRemote(t, site);
    const r = await qemuIo(`${server.uri}@alice`, 'read -P 0xa5 1M 64k', 'read -P 0x5a 5000 3000');
    t.equal(r.code, 0, describeRun(r));
    t.notMatch(r.stdout, /verification failed/, 'the written data after the restart');
    await py.ok({ op: 'connect', h: 'y', uri: `${server.uri}@alice` });
    t.same(await py.pread('y', 0, 5000), site.image.subarray(0, 5000), 'unwritten base bytes before the write');
    t.same(await py.pread('y', 8000, 64 * 1024), site.image.subarray(8000, 8000 + 64 * 1024), 'and after it');
    t.equal((await py.ok({ op: 'sha256', h: 'y' })).sha256, sha256(expected), 'the whole export after the restart');
    await py.ok({ op: 'close', h: 'y' });
    t.equal(await py.end(), 0);
    t.equal((await server.stop()).code, 0);

    const secondServer = (await site.nginx.accessLog()).slice(firstServer.length);
    t.same(
      secondServer.map((e) => e.range),
      [PROBE],
      'the second server fetched nothing but its probe: every base read came from the cache',
    );
    t.notMatch(server.stderr(), /does not match its checksum|starting empty/, 'the cache was taken as it was');
  });

  t.test('block status over a remote base is the local file’s: all data, depth 2, nothing fetched', async (t) => {
    const size = SIZE + 1536; // a short last block
    const site = await serveImage(t, size);
    const remote = await serveRemote(t, site);
    const local = await startServe(t, site.path, ['--overlay-dir', join(site.dir, 'local-overlays')]);
    const maps: Record<string, unknown> = {};
    for (const [name, server] of [
      ['remote', remote],
      ['local', local],
    ] as const) {
      const alloc = await run('nbdinfo', ['--map', '--json', server.uri]);
      t.equal(alloc.code, 0, describeRun(alloc));
      const depth = await run('nbdinfo', ['--map=qemu:allocation-depth', '--json', server.uri]);
      t.equal(depth.code, 0, describeRun(depth));
      maps[name] = { alloc: JSON.parse(alloc.stdout), depth: JSON.parse(depth.stdout) };
    }
    t.match(maps['remote'], {
      alloc: [{ offset: 0, length: size, type: 0 }],
      depth: [{ offset: 0, length: size, type: 2 }],
    });
    t.equal((maps['remote'] as { alloc: unknown[] }).alloc.length, 1, 'one extent: all data');
    t.strictSame(maps['remote'], maps['local'], 'the same extents as the base file served locally');
    t.same(
      (await site.nginx.accessLog()).map((e) => e.range),
      [PROBE],
      'block status fetched nothing (only the probe): the base is data whether cached or not',
    );

    // After one write: that block at depth 1 (the overlay), the rest still 2, on both alike.
    const py = pySession(t);
    const contexts = ['base:allocation', 'qemu:allocation-depth'];
    const status: Record<string, unknown> = {};
    for (const [name, server] of [
      ['remote', remote],
      ['local', local],
    ] as const) {
      await py.ok({ op: 'connect', h: name, uri: server.uri, contexts });
      await py.ok({ op: 'pwrite', h: name, offset: 2 * MiB, data: b64(Buffer.alloc(64 * 1024, 0x77)) });
      status[name] = (await py.ok({ op: 'block_status', h: name, offset: 0, length: size })).contexts;
    }
    t.strictSame(status['remote'], status['local'], 'block status after a write: the same on both');
    t.match(
      (status['remote'] as Record<string, Array<[number, number]>>)['qemu:allocation-depth'],
      [
        [2 * MiB, 2],
        [64 * 1024, 1],
      ],
      'the written block at depth 1, the base below at depth 2',
    );
    t.equal(await py.end(), 0);
  });

  t.test('the image replaced on the server: its named overlays are refused, the cache starts over', async (t) => {
    const site = await serveImage(t);
    let server = await serveRemote(t, site);
    const w = await qemuIo(`${server.uri}@alice`, 'write -P 0xa5 0 64k', 'read 1M 4M');
    t.equal(w.code, 0, describeRun(w));

    // Same size, new bytes, a later mtime: nginx's ETag ("mtime-size") and Last-Modified change.
    const mtime = statSync(site.path).mtime;
    const fresh = randomBytes(SIZE);
    writeFileSync(site.path, fresh);
    const later = new Date(mtime.getTime() + 3600_000);
    utimesSync(site.path, later, later);

    // While the first server runs: an uncached read fails (never new bytes under the old
    // version), cached blocks are still the version it opened.
    const py = pySession(t);
    await py.ok({ op: 'connect', h: 'old', uri: server.uri });
    const stale = await py.call({ op: 'pread', h: 'old', offset: 10 * MiB, length: 4096 });
    t.notOk(stale.ok, `a read of an uncached block fails once the image changed (${stale.error})`);
    t.match(String(stale.errno), /^(5|EIO)$/, `with EIO (${stale.error})`);
    t.same(await py.pread('old', MiB, 4096), site.image.subarray(MiB, MiB + 4096), 'cached blocks: the version opened');
    await matchStderr(t, server, /the image on the server changed since it was opened/, 'the server says why');
    await py.ok({ op: 'close', h: 'old' });
    t.equal((await server.stop()).code, 0);
    const overlay = join(site.overlays, 'named-golden@alice.cow');
    const overlayBefore = await sha256File(overlay);

    server = await serveRemote(t, site);
    await waitFor(
      () => /made for another image version or size; starting empty/.test(server.stderr()),
      'the cache warning',
      10_000,
    ).catch(() => undefined);
    t.match(
      server.stderr(),
      /block cache \S+golden\.raw-[0-9a-f]{16}\.data: made for another image version or size; starting empty/,
      'the server says the cache was made for another image version',
    );
    const refused = await qemuIo(`${server.uri}@alice`, 'read 0 64k');
    t.not(refused.code, 0, `qemu-io on golden@alice fails (${describeRun(refused)})`);
    const info = await run('nbdinfo', ['--size', `${server.uri}@alice`]);
    t.not(info.code, 0, 'nbdinfo on golden@alice fails too');
    t.match(
      server.stderr(),
      /named-golden@alice\.cow belongs to another base image: made for \(size \d+, fingerprint [0-9a-f]+…\), the base is/,
      'the server says the overlay was made for another base',
    );
    t.equal(await sha256File(overlay), overlayBefore, 'the overlay file is unchanged');

    const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', site.path, server.uri]);
    t.equal(cmp.code, 0, `the throwaway export serves the new image (${describeRun(cmp)})`);
    await py.ok({ op: 'connect', h: 'p', uri: server.uri });
    t.same(await py.pread('p', MiB, 4096), fresh.subarray(MiB, MiB + 4096), 'new bytes where the old ones were cached');
    t.equal(await py.end(), 0);
    t.equal((await server.stop()).code, 0);
  });

  t.test('origin faults fail only the reads that need the origin, bounded, and pass', async (t) => {
    const site = await serveImage(t);
    const proxy = await startFaultProxy(t, site.nginx.origin);
    const url = withCredentials(proxy.url('/golden.raw'));
    const server = await serveRemote(t, site, url, ['--remote-retries', '1', '--remote-timeout', '1']);
    const py = pySession(t);
    await py.ok({ op: 'connect', h: 'p', uri: server.uri });
    const warm = await qemuIo(server.uri, 'read 0 1M');
    t.equal(warm.code, 0, `the first MiB read (and cached) (${describeRun(warm)})`);

    await t.test('the origin down: an uncached read fails with EIO, a cached one is served', async (t) => {
      await proxy.goDown();
      const [uncached, cached] = await Promise.all([qemuIo(server.uri, 'read 8M 1M'), qemuIo(server.uri, 'read 0 1M')]);
      t.not(uncached.code, 0, 'the read of an uncached region fails');
      t.match(`${uncached.stdout}${uncached.stderr}`, /read failed: Input\/output error/, 'with an I/O error');
      // The same through libnbd, which shows the NBD error number.
      const down = await py.call({ op: 'pread', h: 'p', offset: 10 * MiB, length: 4096 });
      t.notOk(down.ok, 'libnbd: the read fails');
      t.match(String(down.errno), /^(5|EIO)$/, `libnbd: EIO (${down.error})`);
      t.equal(cached.code, 0, `a second client reads the cached region (${describeRun(cached)})`);
      t.notMatch(cached.stdout, /failed/);
      t.same(await py.pread('p', 100, 100_000), site.image.subarray(100, 100_100), 'cached bytes, while the origin is down');
      t.equal(server.child.exitCode, null, 'the server keeps running');
      await proxy.comeBack();
      const again = await qemuIo(server.uri, 'read 8M 1M');
      t.equal(again.code, 0, `once the origin is back the same read succeeds (${describeRun(again)})`);
      t.same(await py.pread('p', 8 * MiB, MiB), site.image.subarray(8 * MiB, 9 * MiB), 'with the right bytes');
    });

    await t.test('a 503 is tried again', async (t) => {
      proxy.faultNext(1, { kind: 'status', status: 503 });
      const r = await qemuIo(server.uri, 'read 12M 64k');
      t.equal(r.code, 0, `the read succeeds (${describeRun(r)})`);
      await waitFor(() => /503.*trying again/.test(server.stderr()), 'the retry warning', 5000).catch(() => undefined);
      t.match(server.stderr(), /WARN.*golden\.raw bytes \d+-\d+: the server answered 503; trying again in 0\.25 s/i);
      t.same(await py.pread('p', 12 * MiB, 64 * 1024), site.image.subarray(12 * MiB, 12 * MiB + 64 * 1024));
    });

    await t.test('no answer: the read fails after two tries of 1 s, the next one succeeds', async (t) => {
      proxy.faultNext(2, { kind: 'hang' });
      const started = Date.now();
      const r = await qemuIo(server.uri, 'read 14M 64k');
      const took = Date.now() - started;
      t.not(r.code, 0, 'the read fails');
      t.match(`${r.stdout}${r.stderr}`, /read failed: Input\/output error/, 'with an I/O error');
      t.ok(took < 15_000, `within a bounded time (${took} ms)`);
      t.ok(took >= 2000, `after both tries timed out (${took} ms)`);
      await matchStderr(t, server, /no complete answer within 1 s; trying again/);
      const next = await qemuIo(server.uri, 'read 14M 64k');
      t.equal(next.code, 0, `the next read succeeds (${describeRun(next)})`);
      t.same(await py.pread('p', 14 * MiB, 64 * 1024), site.image.subarray(14 * MiB, 14 * MiB + 64 * 1024));
    });

    await py.ok({ op: 'close', h: 'p' });
    t.equal(await py.end(), 0);
    t.equal(server.child.exitCode, null, 'the server is still running after every fault');
    t.equal((await server.stop()).code, 0);
    t.notMatch(server.stderr(), /secret/, 'no warning shows the password');
  });

  t.test('--prefetch fetches the image once; reads then fetch nothing', async (t) => {
    const site = await serveImage(t);
    const server = await serveRemote(t, site, site.url, ['--prefetch']);
    await waitFor(() => /prefetch of \S+ done/.test(server.stderr()), 'prefetch … done on stderr', 30_000);
    t.match(server.stderr(), new RegExp(`prefetch of ${site.url.replace(/[.]/g, '\\.')} done: 16\\.0 MiB fetched`));
    const afterPrefetch = await site.nginx.accessLog();
    t.equal(bodyBytes(afterPrefetch), SIZE + 1, 'the image and the probe byte, once');
    t.same(overlaps(afterPrefetch), [], 'no range fetched twice');

    const out = join(site.dir, 'copy.raw');
    const copy = await run('nbdcopy', [server.uri, out]);
    t.equal(copy.code, 0, describeRun(copy));
    t.ok(readFileSync(out).equals(site.image), 'nbdcopy: the image byte for byte');
    await new Promise((resolve) => setTimeout(resolve, 200));
    t.equal((await site.nginx.accessLog()).length, afterPrefetch.length, 'the full read fetched nothing more');
  });

  t.test('8 clients at once: each byte of the image fetched once', async (t) => {
    const site = await serveImage(t);
    const server = await serveRemote(t, site);
    const outs = Array.from({ length: 8 }, (_, i) => join(site.dir, `copy-${i}.raw`));
    const results = await Promise.all(outs.map((out) => run('nbdcopy', [server.uri, out])));
    for (const [i, r] of results.entries()) t.equal(r.code, 0, `nbdcopy ${i}: ${describeRun(r)}`);
    for (const out of outs) t.ok(readFileSync(out).equals(site.image), `${out}: the image byte for byte`);
    const log = await site.nginx.accessLog();
    t.ok(
      log.every((e) => e.status === 206),
      'every answer a 206',
    );
    t.ok(bodyBytes(log) <= SIZE + 1, `at most the image and the probe byte fetched (${bodyBytes(log)} bytes)`);
    t.equal(bodyBytes(log), SIZE + 1, 'so exactly that: every byte was needed');
    t.same(overlaps(log), [], 'no two fetched ranges overlap');
  });

  t.test('run URL -- nbdinfo {uri}', async (t) => {
    const site = await serveImage(t);
    const r = await runCli([
      'run',
      site.url,
      '--cache-dir',
      site.cacheDir,
      '--overlay-dir',
      site.overlays,
      '--',
      'nbdinfo',
      '--size',
      '{uri}',
    ]);
    t.equal(r.code, 0, describeRun(r));
    t.equal(r.stdout.trim(), String(SIZE), 'nbdinfo prints the size');
    t.match(
      listDir(site.cacheDir),
      [/^golden\.raw-[0-9a-f]{16}\.data$/, /^golden\.raw-[0-9a-f]{16}\.map$/],
      'the cache, no lock left',
    );
    t.equal(listDir(site.cacheDir).length, 2);
  });

  t.test('a configuration file: base: http://…, a relative cache-dir resolved against the file', async (t) => {
    const site = await serveImage(t);
    const confDir = join(site.dir, 'conf');
    mkdirSync(confDir);
    const config = join(confDir, 'lab.yaml');
    writeFileSync(
      config,
      [
        'listen:',
        '  - tcp: 127.0.0.1:0',
        'exports:',
        '  golden:',
        `    base: ${withCredentials(site.url)}`,
        '    cache-dir: cache',
        '    overlay-dir: overlays',
        '    remote-timeout: 5',
        '    remote-retries: 2',
        '',
      ].join('\n'),
    );
    const inRoot = existsSync(join(ROOT, 'cache'));
    const server = await startServeConfig(t, config);
    t.match(server.uri, /^nbd:\/\/127\.0\.0\.1:\d+\/golden$/);
    const info = await run('nbdinfo', ['--json', server.uri]);
    t.equal(info.code, 0, describeRun(info));
    t.match((JSON.parse(info.stdout) as { exports: unknown[] }).exports[0], { 'export-size': SIZE });
    const cmp = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', site.path, server.uri]);
    t.equal(cmp.code, 0, `the export is the image (${describeRun(cmp)})`);
    t.match(
      listDir(join(confDir, 'cache')),
      [/^golden\.raw-[0-9a-f]{16}\.data$/, /^golden\.raw-[0-9a-f]{16}\.lock$/, /^golden\.raw-[0-9a-f]{16}\.map$/],
      'cache-dir: cache is conf/cache, beside the file',
    );
    t.equal(existsSync(join(ROOT, 'cache')), inRoot, 'not in the server’s working directory');
    t.match(server.stderr(), `export "golden": ${site.url}`, 'the log names the export by its URL without credentials');
    t.equal((await server.stop()).code, 0);
    t.notMatch(server.stderr(), /secret/);
  });

  t.test('refusals: one line on stderr, exit 1', async (t) => {
    const site = await serveImage(t, 4 * MiB);
    const serve = (base: string, ...args: string[]): Promise<RunResult> =>
      runCli(['serve', base, '-p', '0', '--cache-dir', site.cacheDir, '--overlay-dir', site.overlays, ...args], {
        timeoutMs: 20_000,
      });
    const oneLine = (t: Test, r: RunResult, pattern: RegExp, what: string): void => {
      t.equal(r.code, 1, `${what}: exit 1 (${describeRun(r)})`);
      t.equal(r.stderr.trim().split('\n').length, 1, `${what}: one line`);
      t.match(r.stderr, pattern, `${what}: ${r.stderr.trim()}`);
    };

    const missing = site.nginx.url('missing.raw');
    const notFound = await serve(missing);
    const shown = missing.replace(/[.]/g, '\\.');
    oneLine(t, notFound, new RegExp(`^nbd-cow: cannot open base image ${shown}\\b.*\\b404$`, 'm'), 'a URL answering 404');
    t.match(notFound.stderr, new RegExp(`cannot open base image ${shown}: the server answered 404`), 'the cause after "URL:"');
    oneLine(t, await serve(site.url, '--cache-size', '1M'), /at least 16M/, '--cache-size 1M');

    const first = await serveRemote(t, site);
    const second = await serve(site.url, '--overlay-dir', join(site.dir, 'other-overlays'));
    oneLine(t, second, new RegExp(`in use by process ${first.pid}`), 'a second server on the same cache');
    t.equal(first.child.exitCode, null, 'the first server keeps running');
    t.equal((await first.stop()).code, 0);
  });
}
