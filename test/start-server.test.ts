// startConfiguredServer with a ServerConfig of two exports on two listeners (TCP and a unix
// socket): the addresses and URI it reports, NBD_OPT_LIST on both listeners, reload() applying
// the exports while warning about start-only settings, a listener that cannot bind (everything
// opened before is closed again), and stop().

import { existsSync } from 'node:fs';
import { connect, createServer, type Server } from 'node:net';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import type { ExportConfig, ListenerConfig, ServerConfig } from '../lib/config/server-config.js';
import { createLogger } from '../lib/log.js';
import type { ListenAddress } from '../lib/server/listener.js';
import { type RunningServer, startConfiguredServer } from '../lib/start-server.js';
import { writeBaseFile } from './helpers/bases.js';
import { fdsOn } from './helpers/files.js';
import { RawClient } from './helpers/raw-nbd/client.js';
import { greet, negotiate } from './helpers/raw-nbd/negotiate.js';
import { readOptionReplies, readSimpleReply } from './helpers/raw-nbd/replies.js';
import { NBD_CMD_READ, optionBytes, requestBytes } from './helpers/raw-nbd/wire.js';
import { shortDir } from './helpers/server-fixture.js';
import { within } from './helpers/wait.js';

const SIZE = 64 * 1024;
const NBD_OPT_ABORT = 2;
const NBD_OPT_LIST = 3;
const NBD_REP_SERVER = 2;
const NBD_REP_ACK = 1;

interface Lab {
  readonly dir: string;
  readonly socket: string;
  readonly bases: Record<'alpha' | 'beta' | 'gamma', { path: string; bytes: Buffer }>;
  readonly lines: string[];
  config(extra?: Partial<ServerConfig>): ServerConfig;
  exportConfig(name: 'alpha' | 'beta' | 'gamma', extra?: Partial<ExportConfig>): ExportConfig;
  /** startConfiguredServer with a logger into `lines`; stopped at teardown. */
  start(config: ServerConfig): Promise<RunningServer>;
}

function lab(t: Test): Lab {
  const dir = t.testdir();
  const socket = join(shortDir(t), 'nbd.sock');
  const bases = {
    alpha: writeBaseFile(dir, SIZE, 'alpha.img'),
    beta: writeBaseFile(dir, 2 * SIZE, 'beta.img'),
    gamma: writeBaseFile(dir, 3 * SIZE, 'gamma.img'),
  };
  const lines: string[] = [];
  const exportConfig: Lab['exportConfig'] = (name, extra = {}) => ({
    name,
    base: bases[name].path,
    description: `the ${name} export`,
    readOnly: false,
    blockSize: 4096,
    overlays: 'both',
    namedOverlayOwner: 'anyone',
    requireTls: false,
    overlayDir: join(dir, `${name}-overlays`),
    ...extra,
  });
  return {
    dir,
    socket,
    bases,
    lines,
    exportConfig,
    config: (extra = {}) => ({
      source: '',
      listen: [{ address: { kind: 'tcp', host: '127.0.0.1', port: 0 } }, { address: { kind: 'unix', path: socket } }],
      exports: [exportConfig('alpha'), exportConfig('beta')],
      ...extra,
    }),
    async start(config) {
      const server = await startConfiguredServer(config, { log: createLogger('info', (line) => lines.push(line)) });
      t.teardown(() => within(server.stop(), 10_000, 'server.stop()'));
      return server;
    },
  };
}

/** NBD_OPT_LIST on `address`: each export's name and description. */
async function listExports(address: ListenAddress): Promise<Array<[string, string]>> {
  const client = await RawClient.connect(address);
  try {
    await greet(client);
    client.write(optionBytes(NBD_OPT_LIST));
    const replies = await readOptionReplies(client);
    if (replies.at(-1)?.replyType !== NBD_REP_ACK) throw new Error('NBD_OPT_LIST was not acknowledged');
    const listed: Array<[string, string]> = [];
    for (const reply of replies.slice(0, -1)) {
      if (reply.replyType !== NBD_REP_SERVER) throw new Error(`unexpected reply 0x${reply.replyType.toString(16)}`);
      const length = reply.payload.readUInt32BE(0);
      listed.push([reply.payload.subarray(4, 4 + length).toString('utf8'), reply.payload.subarray(4 + length).toString('utf8')]);
    }
    client.write(optionBytes(NBD_OPT_ABORT));
    return listed;
  } finally {
    client.destroy();
  }
}

/** Negotiate `exportName` on `address` and READ `length` bytes at 0. */
async function readExport(address: ListenAddress, exportName: string, length: number): Promise<Buffer> {
  const { client } = await negotiate(address, { exportName });
  try {
    client.write(requestBytes({ type: NBD_CMD_READ, cookie: 1n, offset: 0, length }));
    const reply = await readSimpleReply(client);
    if (reply.error !== 0) throw new Error(`READ failed with errno ${reply.error}`);
    return await client.read(length);
  } finally {
    client.destroy();
  }
}

function listenOn(port: number): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port }, () => resolve(server));
  });
}

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => server.close(() => resolve()));
}

function portOf(server: Server): number {
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('not a TCP server');
  return address.port;
}

/** Whether a unix socket at `path` accepts a connection. */
function answers(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ path });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

t.test('addresses, uri, exportName and overlayDir of a server with two listeners and two exports', async (t) => {
  const l = lab(t);
  const server = await l.start(l.config());
  const [tcp, unix] = server.addresses;
  t.equal(server.addresses.length, 2);
  t.equal(tcp?.kind, 'tcp');
  if (tcp?.kind !== 'tcp') return;
  t.equal(tcp.host, '127.0.0.1');
  t.ok(tcp.port > 0, `the real port (${tcp.port}), not 0`);
  t.strictSame(unix, { kind: 'unix', path: l.socket });
  t.equal(server.address, tcp, 'address is the first listener');
  t.equal(server.uri, `nbd://127.0.0.1:${tcp.port}/alpha`, 'the first export on the first listener');
  t.equal(server.exportName, 'alpha');
  t.equal(server.overlayDir, join(l.dir, 'alpha-overlays'));
  t.equal(server.metricsUri, null, 'no metrics configured');
  t.equal(server.connectionCount, 0);
  t.strictSame(l.lines, [], 'nothing to warn about');
});

t.test('both listeners serve both exports', async (t) => {
  const l = lab(t);
  const server = await l.start(l.config());
  const expected: Array<[string, string]> = [
    ['alpha', 'the alpha export'],
    ['beta', 'the beta export'],
  ];
  for (const address of server.addresses) {
    t.strictSame(await listExports(address), expected, `NBD_OPT_LIST on ${address.kind}`);
    t.same(await readExport(address, 'beta', 512), l.bases.beta.bytes.subarray(0, 512), `beta reads on ${address.kind}`);
    t.same(await readExport(address, '', 512), l.bases.alpha.bytes.subarray(0, 512), `"" is alpha on ${address.kind}`);
  }
});

t.test('with the unix socket first, the URI names it', async (t) => {
  const l = lab(t);
  const server = await l.start(
    l.config({ listen: [{ address: { kind: 'unix', path: l.socket } }], exports: [l.exportConfig('beta')] }),
  );
  t.equal(server.uri, `nbd+unix:///beta?socket=${encodeURIComponent(l.socket)}`);
  t.equal(server.exportName, 'beta');
  t.equal(server.overlayDir, join(l.dir, 'beta-overlays'));
});

t.test('reload() applies the exports and warns about listen and metrics, which apply at the next start', async (t) => {
  const l = lab(t);
  const config = l.config();
  const server = await l.start(config);
  const same = await server.reload(l.config());
  t.strictSame(same, { added: [], removed: [], changed: [] });
  t.strictSame(l.lines, [], 'an unchanged configuration: no warning');

  const listen: ListenerConfig[] = [{ address: { kind: 'tcp', host: '127.0.0.1', port: 1 } }];
  const summary = await server.reload(
    l.config({
      listen,
      metrics: { host: '127.0.0.1', port: 9 },
      exports: [l.exportConfig('beta', { description: 'Beta, reloaded' }), l.exportConfig('gamma')],
    }),
  );
  t.strictSame(summary, { added: ['gamma'], removed: ['alpha'], changed: ['beta'] });
  t.strictSame(l.lines, [
    'nbd-cow: warn: reload: listen changed; it applies at the next start\n',
    'nbd-cow: warn: reload: metrics changed; it applies at the next start\n',
  ]);
  t.equal(server.metricsUri, null, 'no metrics server was started');
  for (const address of server.addresses) {
    t.strictSame(
      await listExports(address),
      [
        ['beta', 'Beta, reloaded'],
        ['gamma', 'the gamma export'],
      ],
      `the new exports are served on the listeners already open (${address.kind})`,
    );
  }
  t.same(await readExport(server.address, 'gamma', 512), l.bases.gamma.bytes.subarray(0, 512), 'gamma reads');
  t.strictSame(server.addresses, [server.address, { kind: 'unix', path: l.socket }], 'the listeners are the same');
});

t.test('a reload that fails changes nothing and warns about nothing else', async (t) => {
  const l = lab(t);
  const server = await l.start(l.config());
  await t.rejects(
    server.reload(l.config({ exports: [l.exportConfig('alpha', { base: join(l.dir, 'missing.img') })] })),
    /cannot open base image .*missing\.img/,
  );
  t.strictSame(await listExports(server.address), [
    ['alpha', 'the alpha export'],
    ['beta', 'the beta export'],
  ]);
  t.strictSame(l.lines, []);
});

t.test('a listener that cannot bind: the start fails and closes what it had opened', async (t) => {
  const l = lab(t);
  const busy = await listenOn(0);
  t.teardown(() => closeServer(busy));
  // A port that was free a moment ago, for the listener that does bind: checked free again below.
  const probe = await listenOn(0);
  const port = portOf(probe);
  await closeServer(probe);
  const config = l.config({
    listen: [
      { address: { kind: 'tcp', host: '127.0.0.1', port } },
      { address: { kind: 'unix', path: l.socket } },
      { address: { kind: 'tcp', host: '127.0.0.1', port: portOf(busy) } },
    ],
  });
  await t.rejects(startConfiguredServer(config, { log: createLogger('silent') }), {
    code: 'EADDRINUSE',
    message: `cannot listen on 127.0.0.1:${portOf(busy)}: address already in use`,
  });
  const again = await listenOn(port).catch((err: Error) => err);
  t.notOk(again instanceof Error, `the first listener's port ${port} is free again`);
  if (!(again instanceof Error)) await closeServer(again);
  t.notOk(existsSync(l.socket), 'the unix socket file is removed');
  t.notOk(await answers(l.socket), 'and nobody answers on it');
  t.equal(fdsOn(l.bases.alpha.path), 0, 'the bases are closed');
  t.equal(fdsOn(l.bases.beta.path), 0);
});

t.test('stop() closes listeners and bases, and is idempotent', async (t) => {
  const l = lab(t);
  const server = await startConfiguredServer(l.config(), { log: createLogger('silent') });
  const { client } = await negotiate(server.address, { exportName: 'alpha' });
  t.equal(fdsOn(l.bases.alpha.path), 1);
  const first = server.stop();
  t.equal(server.stop(), first, 'a second stop() while stopping is the same stop');
  await within(first, 10_000, 'stop()');
  t.ok(await client.closed(5000), 'the client was disconnected');
  await within(server.stop(), 5000, 'stop() again');
  t.equal(server.connectionCount, 0);
  t.equal(fdsOn(l.bases.alpha.path), 0, 'alpha is closed');
  t.equal(fdsOn(l.bases.beta.path), 0, 'beta is closed');
  t.notOk(existsSync(l.socket), 'the unix socket file is removed');
  await t.rejects(RawClient.connect(server.address, { timeout: 2000 }), 'the TCP listener is closed');
  client.destroy();
});

t.test('stop() also closes a base a reload replaced while a connection still used it', async (t) => {
  const l = lab(t);
  const server = await startConfiguredServer(l.config(), { log: createLogger('silent') });
  const { client } = await negotiate(server.address, { exportName: 'alpha' });
  await server.reload(l.config({ exports: [l.exportConfig('alpha', { base: l.bases.gamma.path }), l.exportConfig('beta')] }));
  t.equal(fdsOn(l.bases.alpha.path), 1, "the old base stays open for the connection's device");
  t.equal(fdsOn(l.bases.gamma.path), 1, 'the new base is open');
  await within(server.stop(), 10_000, 'stop()');
  t.equal(fdsOn(l.bases.alpha.path), 0, 'the replaced base is closed when stop() resolves');
  t.equal(fdsOn(l.bases.gamma.path), 0, 'and so is the new one');
  client.destroy();
});

t.test('max-connections counts every listener, and connection numbers are unique across them', async (t) => {
  const l = lab(t);
  const server = await l.start(l.config({ maxConnections: 1 }));
  const [tcp, unix] = server.addresses;
  if (tcp === undefined || unix === undefined) {
    t.fail('two listeners expected');
    return;
  }
  const first = await RawClient.connect(tcp);
  await greet(first);
  const second = await RawClient.connect(unix);
  t.ok(await second.closed(5000), 'a connection on the other listener, past the cap, is closed before the greeting');
  t.match(l.lines.join('\n'), /too many connections \(limit 1\)/);
  first.destroy();
  await within(
    (async () => {
      while (server.connectionCount > 0) await new Promise((resolve) => setTimeout(resolve, 10));
    })(),
    5000,
    'the first connection to close',
  );
  const third = await RawClient.connect(unix);
  await greet(third);
  t.equal(server.connectionCount, 1, 'once the first is gone, the unix listener admits one');
  t.strictSame(
    server.sessions().map((s) => s.id),
    [2],
    'numbered after the TCP listener’s connection: one numbering for the server',
  );
  third.destroy();
});
