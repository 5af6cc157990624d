// Socket activation: LISTEN_PID / LISTEN_FDS / LISTEN_FDNAMES read as sd_listen_fds(3) does
// (another process's variables ignored, garbage refused in one line), the variables consumed,
// and the fds checked. The fd checks run in a child (this file again, with ACTIVATION_CHILD set)
// whose fd 3 the test chooses.

import { spawn } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import {
  checkInheritedFd,
  inheritedListenAddresses,
  MAX_LISTEN_FDS,
  parseListenFds,
} from '../../lib/server/socket-activation.js';
import { within } from '../helpers/wait.js';

const PID = 4242;

/** In the child: the outcome of inheritedListenAddresses() on its own environment, one RESULT line. */
function childMain(): void {
  let report: unknown;
  try {
    report = { addresses: inheritedListenAddresses(process.env, process.pid) };
  } catch (err) {
    report = { error: (err as Error).message };
  }
  process.stdout.write(`RESULT ${JSON.stringify(report)}\n`);
}

/** Run this file as the child with `fd3` as its fd 3 and LISTEN_FDS=`count` for its own pid. */
async function inChild(fd3: 'pipe' | number, count: string): Promise<{ addresses?: unknown; error?: string }> {
  const loader = process.execArgv.filter((arg) => arg.includes('typescript'));
  // LISTEN_PID must be the child's own pid, known only once it runs: a shell sets it and execs node.
  const child = spawn(
    '/bin/sh',
    ['-c', 'LISTEN_PID=$$ exec "$@"', 'sh', process.execPath, ...loader, fileURLToPath(import.meta.url)],
    {
      env: { ...process.env, ACTIVATION_CHILD: '1', LISTEN_FDS: count },
      stdio: ['ignore', 'pipe', 'inherit', fd3],
    },
  );
  let out = '';
  child.stdout?.setEncoding('utf8').on('data', (s: string) => (out += s));
  await within(new Promise((resolve) => child.on('close', resolve)), 30_000, 'the child');
  const line = out.split('\n').find((l) => l.startsWith('RESULT '));
  if (line === undefined) throw new Error(`child printed no RESULT: ${out}`);
  return JSON.parse(line.slice('RESULT '.length));
}

if (process.env['ACTIVATION_CHILD'] !== undefined) {
  childMain();
} else {
  t.test('not activated: no LISTEN_PID, or LISTEN_PID of another process, or no LISTEN_FDS', async (t) => {
    t.equal(parseListenFds({}, PID), null);
    t.equal(parseListenFds({ LISTEN_FDS: '2' }, PID), null, 'LISTEN_FDS alone is ignored, as sd_listen_fds does');
    t.equal(parseListenFds({ LISTEN_PID: '4243', LISTEN_FDS: '2' }, PID), null, "a parent's variables");
    t.equal(parseListenFds({ LISTEN_PID: String(PID) }, PID), null);
  });

  t.test('LISTEN_FDS sockets from fd 3 on, with their LISTEN_FDNAMES', async (t) => {
    t.strictSame(parseListenFds({ LISTEN_PID: String(PID), LISTEN_FDS: '1' }, PID), [{ fd: 3 }]);
    t.strictSame(parseListenFds({ LISTEN_PID: String(PID), LISTEN_FDS: '3', LISTEN_FDNAMES: 'nbd:nbd-unix:' }, PID), [
      { fd: 3, name: 'nbd' },
      { fd: 4, name: 'nbd-unix' },
      { fd: 5 },
    ]);
    t.equal(parseListenFds({ LISTEN_PID: String(PID), LISTEN_FDS: String(MAX_LISTEN_FDS) }, PID)?.length, MAX_LISTEN_FDS);
  });

  t.test('garbage is refused in one line', async (t) => {
    const cases: Array<[Record<string, string>, RegExp]> = [
      [{ LISTEN_PID: 'abc', LISTEN_FDS: '1' }, /^LISTEN_PID="abc" is not a decimal number$/],
      [{ LISTEN_PID: '-1', LISTEN_FDS: '1' }, /^LISTEN_PID="-1" is not a decimal number$/],
      [{ LISTEN_PID: ' 4242', LISTEN_FDS: '1' }, /^LISTEN_PID=" 4242" is not a decimal number$/],
      [{ LISTEN_PID: '0', LISTEN_FDS: '1' }, /^LISTEN_PID=0 is not a process id$/],
      [{ LISTEN_PID: '', LISTEN_FDS: '1' }, /^LISTEN_PID="" is not a decimal number$/],
      [{ LISTEN_FDS: 'two' }, /^LISTEN_FDS="two" is not a decimal number$/],
      [{ LISTEN_FDS: '-2' }, /^LISTEN_FDS="-2" is not a decimal number$/],
      [{ LISTEN_FDS: '1e3' }, /^LISTEN_FDS="1e3" is not a decimal number$/],
      [{ LISTEN_FDS: '0x10' }, /^LISTEN_FDS="0x10" is not a decimal number$/],
      [{ LISTEN_FDS: '99999999999999999999' }, /is not a decimal number$/],
      [{ LISTEN_FDS: '0' }, /^LISTEN_FDS=0: expected 1 to 64 sockets$/],
      [{ LISTEN_FDS: String(MAX_LISTEN_FDS + 1) }, /^LISTEN_FDS=65: expected 1 to 64 sockets$/],
      [{ LISTEN_FDS: '4294967295' }, /^LISTEN_FDS=4294967295: expected 1 to 64 sockets$/],
      [{ LISTEN_FDS: '2', LISTEN_FDNAMES: 'one' }, /^LISTEN_FDNAMES has 1 name\(s\) for LISTEN_FDS=2 socket\(s\)$/],
      [{ LISTEN_FDS: '1', LISTEN_FDNAMES: 'a:b' }, /^LISTEN_FDNAMES has 2 name\(s\) for LISTEN_FDS=1 socket\(s\)$/],
      [{ LISTEN_FDS: '1', LISTEN_FDNAMES: 'bad\nname' }, /^LISTEN_FDNAMES holds an invalid name "bad\\nname"$/],
      [{ LISTEN_FDS: '1', LISTEN_FDNAMES: 'x'.repeat(256) }, /^LISTEN_FDNAMES holds an invalid name "x{64}"$/],
    ];
    for (const [env, message] of cases) {
      t.throws(() => parseListenFds({ LISTEN_PID: String(PID), ...env }, PID), message, JSON.stringify(env));
    }
  });

  t.test('the variables are consumed, even when they are not ours or are garbage', async (t) => {
    const theirs = { LISTEN_PID: '1', LISTEN_FDS: '1', LISTEN_FDNAMES: 'x', OTHER: 'kept' };
    t.equal(inheritedListenAddresses(theirs, PID), null);
    t.strictSame(theirs, { OTHER: 'kept' });
    const garbage = { LISTEN_PID: String(PID), LISTEN_FDS: 'many', LISTEN_FDNAMES: 'x', OTHER: 'kept' };
    t.throws(() => inheritedListenAddresses(garbage, PID), /^LISTEN_FDS="many" is not a decimal number$/);
    t.strictSame(garbage, { OTHER: 'kept' });
    t.equal(inheritedListenAddresses({}, PID), null, 'not activated');
  });

  t.test('the inherited fds must be open sockets', async (t) => {
    const socket = await inChild('pipe', '1');
    t.strictSame(socket, { addresses: [{ kind: 'inherited', fd: 3 }] }, 'fd 3 a socket (a pipe from spawn is a socketpair)');
    const file = openSync(join(t.testdir(), 'not-a-socket'), 'w');
    t.teardown(() => closeSync(file));
    t.strictSame(await inChild(file, '1'), { error: 'LISTEN_FDS=1, but fd 3 is not a socket' });
    // A count larger than what was passed reaches node's own fds (epoll, eventfd): refused.
    t.match(await inChild('pipe', String(MAX_LISTEN_FDS)), {
      error: /^LISTEN_FDS=64, but fd 4 is not (a socket|open \(EBADF\))$/,
    });
  });

  t.test('a closed fd is refused', async (t) => {
    const fd = openSync(join(t.testdir(), 'closed'), 'w');
    closeSync(fd);
    t.throws(() => checkInheritedFd(fd, 2), { message: `LISTEN_FDS=2, but fd ${fd} is not open (EBADF)` });
  });
}
