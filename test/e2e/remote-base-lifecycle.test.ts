// A remote base through a server's life: killed (SIGKILL) in the middle of a prefetch, the next
// server takes the cache over and serves every byte right; a SIGHUP reload that gives the
// export a new backing shares the open remote base (and its cache) instead of fighting it for
// the cache's lock; and the Node API's startServer takes a URL.

import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { startServer } from '../../lib/index.js';
import { requireClients } from '../helpers/clients.js';
import { startFaultProxy } from '../helpers/fault-proxy.js';
import { requireNginx, settledAccessLog, startNginx } from '../helpers/nginx.js';
import { describeRun, run } from '../helpers/processes.js';
import { startServe, startServeConfig } from '../helpers/server-process.js';
import { waitFor } from '../helpers/wait.js';

const MiB = 1024 * 1024;

if (requireNginx(t) && requireClients(t, ['qemu-img', 'nbdinfo'])) {
  t.test('SIGKILL during a prefetch: the next server takes the cache over and serves it exactly', async (t) => {
    const dir = t.testdir({ www: {} });
    const image = randomBytes(32 * MiB);
    const path = join(dir, 'www', 'golden.raw');
    writeFileSync(path, image);
    const nginx = await startNginx(t, { root: join(dir, 'www') });
    // Slow answers, so the kill lands while blocks are on their way and being kept.
    const proxy = await startFaultProxy(t, nginx.origin);
    proxy.setFault({ kind: 'delay', ms: 30 });
    const args = ['--cache-dir', join(dir, 'cache'), '--overlay-dir', join(dir, 'overlays')];
    const first = await startServe(t, proxy.url('/golden.raw'), [...args, '--prefetch']);
    await waitFor(() => proxy.stats.bytes > 4 * MiB, 'part of the prefetch', 20_000);
    await first.stop('SIGKILL');
    proxy.setFault({ kind: 'none' });

    const second = await startServe(t, proxy.url('/golden.raw'), args);
    const compared = await run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', path, second.uri]);
    t.equal(compared.code, 0, `every byte right after the crash (${describeRun(compared)})`);
    t.notMatch(second.stderr(), /in use by process/, "the dead server's lock was taken over");
    t.equal((await second.stop()).code, 0);
    t.match(second.stderr(), /remote base .*: fetched [\d.]+ MiB in \d+ requests for 32.00 MiB read/);
  });

  t.test('a reload that gives the export a new backing shares the open remote base', async (t) => {
    const dir = t.testdir({ www: {} });
    const image = randomBytes(4 * MiB);
    writeFileSync(join(dir, 'www', 'golden.raw'), image);
    const nginx = await startNginx(t, { root: join(dir, 'www') });
    const config = join(dir, 'nbd-cow.yaml');
    const write = (blockSize: number): void =>
      writeFileSync(
        config,
        `listen: [{ tcp: "127.0.0.1:0" }]\nexports:\n  golden:\n    base: ${nginx.url('golden.raw')}\n` +
          `    cache-dir: cache\n    block-size: ${blockSize}\n`,
      );
    write(4096);
    const server = await startServeConfig(t, config);
    const before = await run('nbdinfo', ['--size', server.uri]);
    t.equal(before.stdout.trim(), String(4 * MiB), describeRun(before));
    write(65536);
    process.kill(server.pid, 'SIGHUP');
    await waitFor(() => /reloaded|reload failed|cannot/.test(server.stderr()), 'the reload', 10_000);
    t.match(server.stderr(), /reloaded .*changed golden/);
    t.notMatch(server.stderr(), /in use by/, 'no fight over the cache');
    const after = await run('nbdinfo', ['--json', server.uri]);
    t.match(after.stdout, /"block_size_preferred": 65536/, 'the new backing serves');
    const compared = await run('qemu-img', ['compare', '-f', 'raw', join(dir, 'www', 'golden.raw'), server.uri]);
    t.equal(compared.code, 0, describeRun(compared));
    t.equal((await server.stop()).code, 0);
  });

  t.test('the Node API: startServer({ base: URL, remote })', async (t) => {
    const dir = t.testdir({ www: {} });
    const image = randomBytes(2 * MiB);
    writeFileSync(join(dir, 'www', 'golden.raw'), image);
    const nginx = await startNginx(t, { root: join(dir, 'www') });
    const server = await startServer({
      base: nginx.url('golden.raw'),
      listen: { kind: 'tcp', host: '127.0.0.1', port: 0 },
      remote: { cacheDir: join(dir, 'cache'), prefetch: true },
      logLevel: 'error',
    });
    t.teardown(() => server.stop());
    t.match(server.uri, /^nbd:\/\/127\.0\.0\.1:\d+\/golden$/);
    const compared = await run('qemu-img', ['compare', '-f', 'raw', join(dir, 'www', 'golden.raw'), server.uri]);
    t.equal(compared.code, 0, describeRun(compared));
    await server.stop();
    const log = await settledAccessLog(nginx);
    t.equal(
      log.reduce((sum, e) => sum + e.bodyBytesSent, 0),
      2 * MiB + 1,
      'prefetch and the reads together fetched each byte once',
    );
  });
}
