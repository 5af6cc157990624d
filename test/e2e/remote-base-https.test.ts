// A remote base over https:// from nginx with a certificate of the test's own CA: trusted
// through NODE_EXTRA_CA_CERTS, served byte-exact to nbdcopy (in `run` mode); untrusted, refused
// at start in one line that says why.

import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { requireClients } from '../helpers/clients.js';
import { requireNginx, startNginx } from '../helpers/nginx.js';
import { runCli } from '../helpers/server-process.js';
import { tlsFixtures } from '../helpers/tls-fixtures.js';

const SIZE = 4 * 1024 * 1024 + 512;

if (requireNginx(t) && requireClients(t, ['nbdcopy'])) {
  t.test('https:// with a trusted CA serves the image; without it, the start is refused', async (t) => {
    const dir = t.testdir({ www: {} });
    const image = randomBytes(SIZE);
    writeFileSync(join(dir, 'www', 'golden.raw'), image);
    const tls = await tlsFixtures();
    const nginx = await startNginx(t, {
      root: join(dir, 'www'),
      tls: { cert: join(tls.serverDir, 'server-cert.pem'), key: join(tls.serverDir, 'server-key.pem') },
    });
    const url = nginx.url('golden.raw');
    t.match(url, /^https:\/\/127\.0\.0\.1:\d+\/golden\.raw$/);
    const out = join(dir, 'copy.raw');
    const trusted = await runCli(['run', url, '--cache-dir', join(dir, 'cache'), '--', 'sh', '-c', `nbdcopy "$NBD_URI" ${out}`], {
      env: { ...process.env, NODE_EXTRA_CA_CERTS: tls.caCert },
      timeoutMs: 60_000,
    });
    t.equal(trusted.code, 0, trusted.stderr);
    t.ok(readFileSync(out).equals(image), 'nbdcopy read the image byte for byte');

    const untrusted = await runCli(['run', url, '--cache-dir', join(dir, 'cache2'), '--', 'true'], { timeoutMs: 60_000 });
    t.equal(untrusted.code, 1);
    t.match(untrusted.stderr, /^nbd-cow: cannot open base image https:\/\/127\.0\.0\.1:\d+\/golden\.raw: .*certificate/m);
    t.equal(untrusted.stderr.trim().split('\n').length, 1, untrusted.stderr);
  });
}
