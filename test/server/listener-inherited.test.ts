// NbdListener on sockets inherited from systemd: this file runs again as the activated child of
// systemd-socket-activate (with CHILD_FLAG), reads LISTEN_FDS, listens on each socket and
// reports the addresses they resolved to; the parent negotiates over each one and stops it. The
// unix socket file is systemd's: it stays after stop.

import { createSocket } from 'node:dgram';
import { existsSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t, { type Test } from 'tap';
import type { ListenAddress, NbdListener } from '../../lib/server/listener.js';
import { inheritedListenAddresses } from '../../lib/server/socket-activation.js';
import { formatUri } from '../../lib/server/uri.js';
import { requireAll } from '../helpers/ci.js';
import { missing } from '../helpers/clients.js';
import { FakeDevice } from '../helpers/fake-device.js';
import { createFakeListener } from '../helpers/fake-listener.js';
import { run } from '../helpers/processes.js';
import { negotiate } from '../helpers/raw-nbd/negotiate.js';
import { shortDir } from '../helpers/server-fixture.js';
import { type Activated, haveSocketActivate, SOCKET_ACTIVATE, socketActivate } from '../helpers/socket-activate.js';
import { waitFor } from '../helpers/wait.js';

const SIZE = 64 * 1024;
/**
 * Marks the child. An argument, not a variable: systemd-socket-activate passes the command only
 * a few of its variables, and a child that took itself for the parent would start its own.
 */
const CHILD_FLAG = '--inherited-child';
/** Connect to the abstract socket argv[1], read the 18-byte greeting, close. */
const PY_CONNECT =
  "import socket, sys; s = socket.socket(socket.AF_UNIX); s.settimeout(60); s.connect('\\0' + sys.argv[1]); s.recv(18)";

interface ChildReport {
  readonly addresses?: ListenAddress[];
  readonly uris?: string[];
  /** LISTEN_* variables still in the child's environment after reading them. */
  readonly leftover?: string[];
  readonly error?: string;
}

/** In the child: listen on every inherited socket, print one RESULT line, stop at SIGTERM. */
async function childMain(): Promise<void> {
  const listeners: NbdListener[] = [];
  let report: ChildReport;
  try {
    const inherited = inheritedListenAddresses() ?? [];
    const addresses: ListenAddress[] = [];
    for (const address of inherited) {
      const listener = createFakeListener({ size: SIZE, openDevice: async () => new FakeDevice(SIZE) });
      listeners.push(listener);
      addresses.push(await listener.listen(address));
    }
    const leftover = Object.keys(process.env).filter((key) => key.startsWith('LISTEN_'));
    report = { addresses, uris: addresses.map((a) => formatUri(a, 'fake')), leftover };
  } catch (err) {
    report = { error: (err as Error).message };
  }
  // The handler first: the parent sends SIGTERM as soon as it has read the RESULT line.
  process.once('SIGTERM', () => {
    void Promise.all(listeners.map((l) => l.stop())).then(() => process.exit(0));
  });
  process.stdout.write(`RESULT ${JSON.stringify(report)}\n`);
}

/** The child's RESULT, once it printed it (it starts at the first connection, which the caller makes). */
async function report(activated: Activated): Promise<ChildReport> {
  const line = (): string | undefined => activated.stdout().match(/^RESULT (.*)$/m)?.[1];
  try {
    // Generous: a loaded machine takes seconds to start node with the TypeScript loader.
    await waitFor(() => line() !== undefined, "the child's RESULT", 90_000);
  } catch (err) {
    throw new Error(`${(err as Error).message}; stderr: ${activated.stderr()}`);
  }
  return JSON.parse(line() as string) as ChildReport;
}

function activate(t: Test, options: { tcp?: boolean; unixPaths?: string[]; fdnames?: string[]; datagram?: boolean }) {
  const loader = process.execArgv.filter((arg) => arg.includes('typescript'));
  return socketActivate(t, {
    ...options,
    command: process.execPath,
    args: [...loader, fileURLToPath(import.meta.url), CHILD_FLAG],
    // What tap's TypeScript loader needs from tap's environment (type-checking would take minutes).
    setenv: { TS_NODE_TRANSPILE_ONLY: process.env['TS_NODE_TRANSPILE_ONLY'] ?? '1' },
  });
}

if (process.argv.includes(CHILD_FLAG)) {
  await childMain();
} else if (
  requireAll(t, [...(haveSocketActivate() ? [] : [SOCKET_ACTIVATE]), ...missing('python3')], 'the Debian systemd package has it')
) {
  t.test('TCP and unix sockets from systemd: served, reported as their real addresses, the file left', async (t) => {
    const path = join(shortDir(t), 'nbd.sock');
    const activated = await activate(t, { tcp: true, unixPaths: [path], fdnames: ['nbd', 'nbd-unix'] });
    // The first connection makes systemd-socket-activate exec the child; it waits in the backlog.
    const trigger = connect({ host: '127.0.0.1', port: activated.port });
    trigger.on('error', () => undefined);
    t.teardown(() => trigger.destroy());
    const result = await report(activated);
    t.strictSame(result, {
      addresses: [
        { kind: 'tcp', host: '127.0.0.1', port: activated.port },
        { kind: 'unix', path },
      ],
      uris: [`nbd://127.0.0.1:${activated.port}/fake`, `nbd+unix:///fake?socket=${encodeURIComponent(path)}`],
      leftover: [],
    });
    for (const address of result.addresses ?? []) {
      const n = await negotiate(address);
      t.equal(n.size, SIZE, `negotiated over ${address.kind}`);
      n.client.destroy();
    }
    trigger.destroy();
    t.strictSame(await activated.stop(), { code: 0, signal: null }, 'stops on SIGTERM');
    t.ok(existsSync(path), 'the socket file systemd bound is not removed');
  });

  t.test('an abstract unix socket has no path: served, reported as inherited', async (t) => {
    const name = `nbd-cow-test-${process.pid}`;
    const activated = await activate(t, { unixPaths: [`@${name}`], fdnames: ['abstract'] });
    // Node pads an abstract address differently from systemd and cannot connect to it: python can.
    const trigger = run('python3', ['-c', PY_CONNECT, name]);
    const result = await report(activated);
    t.equal((await trigger).code, 0, 'python3 connected and read the greeting');
    t.strictSame(result, {
      addresses: [{ kind: 'inherited', fd: 3, name: 'abstract' }],
      uris: ['nbd: inherited socket fd 3 (abstract), export "fake"'],
      leftover: [],
    });
    t.strictSame(await activated.stop(), { code: 0, signal: null });
  });

  t.test('a datagram socket is refused in one line', async (t) => {
    const activated = await activate(t, { tcp: true, datagram: true });
    const sender = createSocket('udp4');
    t.teardown(() => sender.close());
    sender.send('wake up', activated.port, '127.0.0.1');
    t.strictSame(await report(activated), {
      error:
        'cannot listen on inherited fd 3: not a listening stream socket (a datagram socket, or a connection from Accept=yes?)',
    });
    t.strictSame(await activated.stop(), { code: 0, signal: null });
  });
}
