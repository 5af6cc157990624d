// `serve --workers 2` with real clients (doc/workers.md, lib/server/workers.ts): the primary hands
// each connection to the worker process with fewest connections (so two held connections land
// on both), throwaway overlays stay private, a worker killed with
// SIGKILL loses only its own connection (the primary says so, removes its overlay files and
// starts another), --metrics merges every process's, and SIGTERM stops every process and leaves
// no overlay behind. A named overlay is one device: connections that land on other workers move
// to the one that has it open (hand-over.ts), and see each other's writes; when that worker is
// killed, the next GO opens the overlay in a live one. Over TLS a connection cannot move: the
// worker that holds its TLS session relays it to the owner. Two servers started at once on one
// unix socket: one serves it and the other stops, saying why.

import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { parseSessions } from '../../lib/server/session-list.js';
import { makePatternBase } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { scrapeUntil, startMetricsServe } from '../helpers/metrics-serve.js';
import { describeRun, run } from '../helpers/processes.js';
import { pySession } from '../helpers/py-session.js';
import { matchStderr, runCli, type ServerProcess, startServe } from '../helpers/server-process.js';
import { libnbdPskUri, qemuPskArgs, type TlsFixtures, tlsFixtures } from '../helpers/tls-fixtures.js';

const SIZE = 4 * 1024 * 1024;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Poll `check` every 50 ms for up to `ms`; true once it held. */
async function eventually(check: () => boolean, ms = 10_000): Promise<boolean> {
  for (const end = Date.now() + ms; Date.now() < end; ) {
    if (check()) return true;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return check();
}

/** serve --workers 2 on a unix socket (in a short private directory: sun_path is short), overlays in `overlays`. */
async function startUnixWorkers(t: Test): Promise<{ overlays: string; sock: string; server: ServerProcess }> {
  const dir = t.testdir();
  const overlays = join(dir, 'overlays');
  const base = await makePatternBase(dir, SIZE);
  const sockDir = mkdtempSync(join(tmpdir(), 'nbdcow-w-'));
  t.teardown(() => rmSync(sockDir, { recursive: true, force: true }));
  const sock = join(sockDir, 's');
  return { overlays, sock, server: await startServe(t, base, ['-k', sock, '--overlay-dir', overlays, '--workers', '2']) };
}

/** serve --workers 2 --tls require with the fixtures' PSK file, over TCP. */
async function startTlsWorkers(t: Test): Promise<{ server: ServerProcess; tls: TlsFixtures }> {
  const tls = await tlsFixtures();
  const dir = t.testdir();
  const base = await makePatternBase(dir, SIZE);
  const args = ['--overlay-dir', join(dir, 'ov'), '--workers', '2', '--tls', 'require', '--tls-psk', tls.pskFile];
  return { server: await startServe(t, base, args), tls };
}

if (requireClients(t, ['qemu-io'], true)) {
  t.test('two workers serve throwaway overlays; a dead worker costs only its connections', async (t) => {
    const { overlays, server } = await startUnixWorkers(t);
    const pids = (): number[] => {
      const lines = [...server.stderr().matchAll(/serving with 2 worker processes: (\d+), (\d+)/g)];
      return lines.length === 0 ? [] : [Number(lines[0]?.[1]), Number(lines[0]?.[2])];
    };
    t.ok(await eventually(() => pids().length === 2), 'the primary names its two workers');
    const [w1, w2] = pids() as [number, number];
    t.ok(alive(w1) && alive(w2), 'both workers run');
    t.not(w1, server.pid);

    const py = pySession(t);
    await py.ok({ op: 'connect', h: 'a', uri: server.uri });
    await py.ok({ op: 'connect', h: 'b', uri: server.uri });
    await py.ok({ op: 'pwrite', h: 'a', offset: 0, data: Buffer.alloc(4096, 0xaa).toString('base64') });
    t.same(await py.pread('a', 0, 4096), Buffer.alloc(4096, 0xaa), 'a reads its own write');
    t.notSame(await py.pread('b', 0, 4096), Buffer.alloc(4096, 0xaa), "b does not see a's throwaway overlay");
    const labels = (): string[] => [
      ...new Set([...server.stderr().matchAll(/nbd-cow\[worker (\d+)\]: conn \d+ /g)].map((m) => m[1] as string)),
    ];
    t.ok(await eventually(() => labels().length === 2), `the two connections went to different workers (${labels().join(', ')})`);
    t.same(labels().map(Number).sort(), [w1, w2].sort());
    t.equal(readdirSync(overlays).filter((f) => f.endsWith('.cow')).length, 1, "a's overlay file exists");

    // Kill the worker holding a (the one whose overlay file exists).
    const owner = Number(/^eph-(\d+)-/.exec(readdirSync(overlays).find((f) => f.endsWith('.cow')) ?? '')?.[1]);
    t.ok(owner === w1 || owner === w2, `the overlay file carries a worker's pid (${owner})`);
    process.kill(owner, 'SIGKILL');
    t.ok(
      await eventually(() =>
        new RegExp(`worker ${owner} exited \\(SIGKILL\\): its 1 connection\\(s\\) were dropped; starting another in 0.5 s`).test(
          server.stderr(),
        ),
      ),
      'the primary says which worker died and what it cost (it died young: its replacement waits a little)',
    );
    t.ok(
      await eventually(() => new RegExp(`worker \\d+ started, replacing ${owner}`).test(server.stderr())),
      'and then that a replacement started',
    );
    const broken = await py.call({ op: 'pread', h: 'a', offset: 0, length: 4096 });
    t.equal(broken.ok, false, "the dead worker's client gets an error");
    t.same(await py.pread('b', 4096, 4096), await py.pread('b', 4096, 4096), 'the other worker goes on');
    t.ok(
      await eventually(() => readdirSync(overlays).filter((f) => f.endsWith('.cow')).length === 0),
      "the dead worker's overlay is swept",
    );
    t.ok(
      await eventually(() => !readdirSync(tmpdir()).some((f) => f.startsWith(`nbd-cow-relay-${owner}-`))),
      "and so is its relay socket's directory",
    );
    const again = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5c 0 64k', '-c', 'read -P 0x5c 0 64k', server.uri]);
    t.equal(again.code, 0, `a new client is served: ${describeRun(again)}`);
    t.notMatch(again.stdout, /Pattern verification failed/);

    await py.ok({ op: 'close', h: 'b' });
    await py.end();
    const workersNow = [w1, w2].filter((p) => p !== owner);
    t.equal((await server.stop()).code, 0, 'SIGTERM: the primary exits 0');
    t.ok(await eventually(() => workersNow.every((p) => !alive(p)), 15_000), 'and its workers are gone');
    t.same(
      readdirSync(overlays).filter((f) => f.endsWith('.cow')),
      [],
      'no overlay is left',
    );
  });
}

if (requireClients(t, ['nbdinfo', 'qemu-io', 'openssl'], true)) {
  t.test('TLS with workers: each worker does the whole handshake; a client without TLS is refused', async (t) => {
    const { server, tls } = await startTlsWorkers(t);
    t.match(server.uri, /^nbds:/, 'the primary prints the TLS URI');
    const info = await run('nbdinfo', ['--size', libnbdPskUri(server.uri, tls.pskAlice)]);
    t.equal(info.code, 0, describeRun(info));
    t.equal(info.stdout.trim(), String(SIZE));
    const io = await run('qemu-io', [
      ...qemuPskArgs(server.uri, tls.pskBob),
      '-c',
      'write -P 0x33 0 8192',
      '-c',
      'read -P 0x33 0 8192',
    ]);
    t.equal(io.code, 0, describeRun(io));
    t.notMatch(io.stdout, /Pattern verification failed/);
    const url = new URL(server.uri);
    const plain = await run('nbdinfo', ['--size', `nbd://${url.host}${url.pathname}`]);
    t.not(plain.code, 0, 'a client without TLS is refused');
    t.match(plain.stderr, /TLS/);
    t.equal((await server.stop()).code, 0);
  });
}

if (requireClients(t, ['qemu-io'], true)) {
  t.test('a named overlay is one device across workers: its connections move to the worker that has it open', async (t) => {
    const { overlays, sock, server } = await startUnixWorkers(t);
    const named = `nbd+unix:///base@vm?socket=${sock}`;
    const py = pySession(t);
    // Meta contexts are negotiated before GO: a moved connection must have them too (the replay).
    const contexts = ['base:allocation', 'qemu:allocation-depth'];
    for (const h of ['a', 'b', 'c']) await py.ok({ op: 'connect', h, uri: named, contexts });
    for (const h of ['a', 'b', 'c']) {
      const info = await py.ok({ op: 'info', h });
      t.same(info.contexts, { 'base:allocation': true, 'qemu:allocation-depth': true }, `${h}: both meta contexts`);
      t.equal(info.can_multi_conn, true, `${h}: CAN_MULTI_CONN`);
    }
    await py.ok({ op: 'pwrite', h: 'a', offset: 0, data: Buffer.alloc(4096, 0xab).toString('base64') });
    t.same(await py.pread('b', 0, 4096), Buffer.alloc(4096, 0xab), "b sees a's completed write");
    await py.ok({ op: 'pwrite', h: 'c', offset: 8192, data: Buffer.alloc(4096, 0xcd).toString('base64') });
    await py.ok({ op: 'flush', h: 'b' });
    t.same(await py.pread('a', 8192, 4096), Buffer.alloc(4096, 0xcd), "a sees c's write");
    const status = await py.ok({ op: 'block_status', h: 'b', offset: 0, length: 16384 });
    t.same(
      (status.contexts as Record<string, number[][]>)['qemu:allocation-depth'],
      [
        [4096, 1],
        [4096, 2],
        [4096, 1],
        [4096, 2],
      ],
      "b's block status (negotiated before it moved) shows both writes in the overlay",
    );
    const owners = (): string[] => [
      ...new Set(
        [...server.stderr().matchAll(/nbd-cow\[worker (\d+)\]: conn \d+ \(unix\): export "base@vm"/g)].map((m) => m[1] as string),
      ),
    ];
    t.equal(owners().length, 1, `every connection to base@vm is served by one worker (${owners().join(', ')})`);
    await matchStderr(t, server, /handed over to worker \d+, which has the named overlay open/, 'a connection moved');
    t.notMatch(server.stderr(), /refused base@vm/, 'no refusal is logged for a move');

    // The owner dies: the connections it served are gone, and the next GO opens the overlay in a live worker.
    const owner = Number(owners()[0]);
    process.kill(owner, 'SIGKILL');
    t.ok(
      await eventually(() => new RegExp(`worker ${owner} exited \\(SIGKILL\\)`).test(server.stderr())),
      'the primary saw the owner die',
    );
    const again = await run('qemu-io', ['-f', 'raw', '-c', 'read -P 0xab 0 4k', named]);
    t.equal(again.code, 0, `after the owner died, base@vm is served again: ${describeRun(again)}`);
    t.notMatch(again.stdout, /Pattern verification failed/, 'with the write a made (qemu-io flushed nothing, but b flushed)');
    await py.end();
    t.equal((await server.stop()).code, 0);
    t.same(readdirSync(overlays).sort(), ['named-base@vm.cow'], 'the named overlay is kept, its lock released');
  });
}

if (requireClients(t, ['nbdinfo', 'openssl'], true)) {
  t.test('over TLS a connection cannot move: the worker holding its TLS session relays it to the owner', async (t) => {
    const { server, tls } = await startTlsWorkers(t);
    const alice = libnbdPskUri(server.uri, tls.pskAlice, 'base@vm');
    const py = pySession(t);
    const contexts = ['base:allocation'];
    await py.ok({ op: 'connect', h: 'a', uri: alice, contexts });
    // The primary gives the next connection to the other worker (fewest connections).
    await py.ok({ op: 'connect', h: 'b', uri: libnbdPskUri(server.uri, tls.pskBob, 'base@vm'), contexts });
    await py.ok({ op: 'pwrite', h: 'a', offset: 0, data: Buffer.alloc(65536, 0x5a).toString('base64') });
    t.same(await py.pread('b', 0, 65536), Buffer.alloc(65536, 0x5a), "b, relayed, sees a's write");
    await py.ok({ op: 'pwrite', h: 'b', offset: 1 << 20, data: Buffer.alloc(4096, 0x6b).toString('base64') });
    await py.ok({ op: 'flush', h: 'b' });
    t.same(await py.pread('a', 1 << 20, 4096), Buffer.alloc(4096, 0x6b), "and a sees b's");
    const info = await py.ok({ op: 'info', h: 'b' });
    t.same(
      info.contexts,
      { 'base:allocation': true, 'qemu:allocation-depth': false },
      'the relayed connection has its meta context',
    );
    await matchStderr(t, server, /relayed to worker \d+, which has the named overlay open \(the TLS session stays here\)/);
    await py.ok({ op: 'close', h: 'b' });
    await py.ok({ op: 'close', h: 'a' });
    await py.end();
    const sessions =
      server
        .stderr()
        .match(/conn \d+ \(127\.0\.0\.1:\d+, relayed\): disconnected \(client sent NBD_CMD_DISC\): export "base@vm"/g) ?? [];
    t.equal(
      sessions.length,
      1,
      'the owner served the relayed connection, under its peer, to its end (NBD_CMD_DISC came through)',
    );
    t.equal((await server.stop()).code, 0);
  });
}

if (requireClients(t, [], true)) {
  // As root, once more with --user: the workers serve the endpoint after giving up root (tap's
  // coverage hook is left out of that server's environment: as nobody it could not write its files).
  const asRoot = process.geteuid?.() === 0;
  for (const user of asRoot ? [[], ['--user', 'nobody']] : [[]]) {
    t.test(
      `--metrics with workers${user.length > 0 ? ' and --user' : ''}: the metrics and sessions of every process, merged`,
      async (t) => {
        const dir = t.testdir();
        const base = await makePatternBase(dir, SIZE);
        const { NODE_OPTIONS: _hook, NODE_V8_COVERAGE: _coverage, ...plain } = process.env;
        const server = await startMetricsServe(
          t,
          base,
          ['--overlay-dir', join(dir, 'made-by-server', 'ov'), '--workers', '2', ...user],
          user.length > 0 ? plain : process.env,
        );
        const py = pySession(t);
        await py.ok({ op: 'connect', h: 'a', uri: server.uri });
        await py.ok({ op: 'connect', h: 'b', uri: server.uri });
        await py.ok({ op: 'pwrite', h: 'a', offset: 0, data: Buffer.alloc(4096, 1).toString('base64') });
        await py.pread('b', 0, 8192);
        const samples = await scrapeUntil(server.metricsUri, (m) => m.get('nbd_cow_connections{export="base"}') === 2);
        t.equal(samples.get('nbd_cow_connections{export="base"}'), 2, 'both connections, on two workers, in one gauge');
        t.equal(samples.get('nbd_cow_written_bytes_total{export="base"}'), 4096, "a's write (one worker)");
        t.equal(samples.get('nbd_cow_read_bytes_total{export="base"}'), 8192, "b's read (the other)");
        const response = await fetch(server.metricsUri.replace(/\/metrics$/, '/sessions'), {
          signal: AbortSignal.timeout(10_000),
        });
        const sessions = parseSessions(await response.text(), 'the primary');
        t.equal(sessions.length, 2, 'two sessions');
        t.equal(
          new Set(sessions.map((s) => s.worker)).size,
          2,
          `each names its worker (${sessions.map((s) => s.worker).join(', ')})`,
        );
        if (user.length > 0) {
          for (const pid of new Set(sessions.map((s) => s.worker))) {
            t.match(readFileSync(`/proc/${pid}/status`, 'utf8'), /^Uid:\s+65534\s/m, `worker ${pid} runs as nobody`);
          }
        }
        await py.end();
        t.equal(await server.stop(), 0);
      },
    );
  }
}

if (requireClients(t, ['nbdinfo'])) {
  t.test('two servers started at once on one unix socket: one serves it, the other stops', async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, SIZE);
    const sockDir = mkdtempSync(join(tmpdir(), 'nbdcow-w-'));
    t.teardown(() => rmSync(sockDir, { recursive: true, force: true }));
    const sock = join(sockDir, 's');
    // The workers' primary binds first and its workers take a second to listen; the single
    // process binds and listens at once. Before the staging name (shared-socket.ts), the single
    // process took the primary's not-yet-listening socket for a dead server's file and replaced
    // it: both ran, and the primary's workers served nobody.
    const started = await Promise.allSettled([
      startServe(t, base, ['-k', sock, '--overlay-dir', join(dir, 'ov1'), '--workers', '2']),
      startServe(t, base, ['-k', sock, '--overlay-dir', join(dir, 'ov2')]),
    ]);
    const serving = started.flatMap((r) => (r.status === 'fulfilled' ? [r.value] : []));
    const refused = started.flatMap((r) => (r.status === 'rejected' ? [(r.reason as Error).message] : []));
    t.equal(serving.length, 1, 'one server runs');
    t.match(refused, [/cannot listen on .*: address already in use/], 'the other stops, saying why');
    const info = await run('nbdinfo', ['--size', `nbd+unix:///?socket=${sock}`]);
    t.equal(info.stdout.trim(), String(SIZE), describeRun(info));
    await matchStderr(
      t,
      serving[0] ?? { stderr: () => '' },
      /conn \d+ \(unix\): export/,
      'the server running is the one that answered',
    );
  });
}

if (requireClients(t, ['nbdinfo'])) {
  t.test('--workers auto: one worker per CPU this process may use', async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, SIZE);
    const cpus = availableParallelism();
    const server = await startServe(t, base, ['--overlay-dir', join(dir, 'ov'), '--workers', 'auto']);
    if (cpus > 1) {
      t.ok(await eventually(() => server.stderr().includes(`serving with ${cpus} worker processes`)), `${cpus} workers`);
    } else {
      t.notMatch(server.stderr(), /worker processes/, 'one CPU: one process, no primary');
    }
    const info = await run('nbdinfo', ['--size', server.uri]);
    t.equal(info.stdout.trim(), String(SIZE), describeRun(info));
    t.equal((await server.stop()).code, 0);
  });
}

if (requireClients(t, ['nbdinfo'], true)) {
  t.test('--max-connections counts the connections of every worker', async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, SIZE);
    const server = await startServe(t, base, ['--overlay-dir', join(dir, 'ov'), '--workers', '2', '--max-connections', '2']);
    const py = pySession(t);
    await py.ok({ op: 'connect', h: 'a', uri: server.uri });
    await py.ok({ op: 'connect', h: 'b', uri: server.uri });
    const workersServing = (): number =>
      new Set([...server.stderr().matchAll(/nbd-cow\[worker (\d+)\]: conn \d+ \([^)]*\): export/g)].map((m) => m[1])).size;
    t.ok(await eventually(() => workersServing() === 2), 'the two connections are in two workers');
    // Each worker learns the other's count within milliseconds (coalesced reports).
    const refused = async (): Promise<boolean> => (await run('nbdinfo', ['--size', server.uri])).code !== 0;
    t.notMatch(server.stderr(), /too many connections/, 'nothing refused yet');
    t.ok(await refused(), 'a third connection is refused, whichever worker accepts it');
    await matchStderr(t, server, /too many connections \(limit 2\)/, 'and the refusal is logged');
    await py.ok({ op: 'close', h: 'a' });
    let served = false;
    for (let i = 0; i < 50 && !served; i++) {
      served = !(await refused());
      if (!served) await new Promise((resolve) => setTimeout(resolve, 50));
    }
    t.ok(served, 'once one has closed, a new connection is served');
    await py.ok({ op: 'close', h: 'b' });
    await py.end();
    t.equal((await server.stop()).code, 0);
  });
}

if (requireClients(t, [], true)) {
  t.test('the primary killed: its workers stop too, leaving no overlay and no orphan', async (t) => {
    const { overlays, server } = await startUnixWorkers(t);
    const found = (): number[] =>
      [...server.stderr().matchAll(/serving with 2 worker processes: (\d+), (\d+)/g)].flatMap((m) => [
        Number(m[1]),
        Number(m[2]),
      ]);
    t.ok(await eventually(() => found().length === 2), 'two workers');
    const py = pySession(t);
    await py.ok({ op: 'connect', h: 'a', uri: server.uri });
    await py.ok({ op: 'pwrite', h: 'a', offset: 0, data: Buffer.alloc(4096, 1).toString('base64') });
    t.equal((await server.stop('SIGKILL')).signal, 'SIGKILL');
    t.ok(await eventually(() => found().every((pid) => !alive(pid)), 20_000), 'both workers exited');
    t.match(server.stderr(), /the primary process is gone: stopping/);
    t.same(
      readdirSync(overlays).filter((f) => f.endsWith('.cow')),
      [],
      "the connection's throwaway overlay is gone",
    );
    await py.end();
  });
}

t.test('--workers refuses a count that is not a positive integer or auto, in one line', async (t) => {
  const dir = t.testdir();
  const base = await makePatternBase(dir, SIZE);
  for (const bad of ['0', 'many', '1.5']) {
    const refused = await runCli(['serve', base, '-p', '0', '--workers', bad]);
    t.equal(refused.code, 1, `--workers ${bad}`);
    t.match(refused.stderr, /--workers/);
  }
});
