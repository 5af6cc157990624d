// Admission: the allow list (TCP only) and the connection cap decide per socket; a refused socket
// is destroyed and logged with its peer, one line per reason and interval.

import type { Socket } from 'node:net';
import t from 'tap';
import { createLogger } from '../../lib/log.js';
import { AccessList } from '../../lib/server/access-list.js';
import { Admission, type AdmissionPolicy, validateConnectionLimit } from '../../lib/server/admission.js';

/** The three things Admission reads of a socket; `destroyed` records the refusal. */
class FakeSocket {
  destroyed = false;
  readonly remoteAddress: string | undefined;
  readonly remotePort: number | undefined;
  constructor(address?: string, port?: number) {
    this.remoteAddress = address;
    this.remotePort = port;
  }
  destroy(): void {
    this.destroyed = true;
  }
  get socket(): Socket {
    return this as unknown as Socket;
  }
}

function admission(policy: AdmissionPolicy): { lines: string[]; gate: Admission } {
  const lines: string[] = [];
  return {
    lines,
    gate: new Admission(
      policy,
      createLogger('debug', (line) => lines.push(line.trimEnd())),
    ),
  };
}

t.test('no policy: every socket is admitted and nothing is logged', async (t) => {
  const { lines, gate } = admission({});
  const peer = new FakeSocket('203.0.113.9', 4000);
  t.ok(gate.admit(peer.socket, 1_000_000, true));
  t.notOk(peer.destroyed);
  t.strictSame(lines, []);
});

t.test('allow list: a TCP peer outside it is destroyed and logged with its address', async (t) => {
  const { lines, gate } = admission({ allow: new AccessList(['10.0.0.0/8']) });
  const inside = new FakeSocket('::ffff:10.1.2.3', 4001);
  t.ok(gate.admit(inside.socket, 0, true), 'IPv4-mapped peer inside 10/8');
  t.notOk(inside.destroyed);
  const outside = new FakeSocket('192.0.2.7', 4002);
  t.notOk(gate.admit(outside.socket, 0, true));
  t.ok(outside.destroyed, 'closed before any byte');
  const v6 = new FakeSocket('2001:db8::1', 4003);
  t.notOk(gate.admit(v6.socket, 0, true));
  gate.flush();
  t.strictSame(lines, [
    'nbd-cow: warn: refused a connection from 192.0.2.7:4002: address not in the allow list',
    'nbd-cow: warn: refused 1 more connection(s), the latest from [2001:db8::1]:4003: address not in the allow list',
  ]);
});

t.test('allow list: a TCP socket without an address (reset already) is refused', async (t) => {
  const { lines, gate } = admission({ allow: new AccessList(['0.0.0.0/0', '::/0']) });
  const gone = new FakeSocket();
  t.notOk(gate.admit(gone.socket, 0, true));
  t.ok(gone.destroyed);
  t.match(lines[0], /from \(address gone\):/);
});

t.test('allow list: unix-socket clients are not checked', async (t) => {
  const { lines, gate } = admission({ allow: new AccessList(['127.0.0.2']) });
  const local = new FakeSocket();
  t.ok(gate.admit(local.socket, 0, false));
  t.notOk(local.destroyed);
  t.strictSame(lines, []);
});

t.test('connection cap: the socket past it is refused, on TCP and unix alike', async (t) => {
  const { lines, gate } = admission({ maxConnections: 2 });
  t.ok(gate.admit(new FakeSocket('127.0.0.1', 1).socket, 0, true));
  t.ok(gate.admit(new FakeSocket('127.0.0.1', 2).socket, 1, true));
  const third = new FakeSocket('127.0.0.1', 3);
  t.notOk(gate.admit(third.socket, 2, true));
  t.ok(third.destroyed);
  const unix = new FakeSocket();
  t.notOk(gate.admit(unix.socket, 5, false));
  t.ok(unix.destroyed);
  gate.flush();
  t.strictSame(lines, [
    'nbd-cow: warn: refused a connection from 127.0.0.1:3: too many connections (limit 2)',
    'nbd-cow: warn: refused 1 more connection(s), the latest from unix: too many connections (limit 2)',
  ]);
});

t.test('the allow list is checked before the cap: an outsider is logged as such', async (t) => {
  const { lines, gate } = admission({ allow: new AccessList(['10.0.0.0/8']), maxConnections: 1 });
  t.notOk(gate.admit(new FakeSocket('192.0.2.1', 9).socket, 1, true));
  t.match(lines, [/not in the allow list/]);
});

t.test('a connection limit must be a positive integer', async (t) => {
  for (const bad of [0, -1, 1.5, Number.NaN, 2 ** 53]) {
    t.throws(() => validateConnectionLimit(bad), /the connection limit must be a positive integer/, String(bad));
    t.throws(() => admission({ maxConnections: bad }), /positive integer/, `Admission(${bad})`);
  }
  t.throws(() => validateConnectionLimit(Number.POSITIVE_INFINITY), /positive integer/, 'Infinity is no limit value');
  t.doesNotThrow(() => validateConnectionLimit(1));
});
