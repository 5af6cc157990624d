// AccessList: which peer addresses a list of CIDR ranges admits (IPv4, IPv6, IPv4-mapped IPv6,
// /0, single addresses), and the one-line errors for entries that are not ranges.

import t from 'tap';
import { AccessList } from '../../lib/server/access-list.js';

const CASES: ReadonlyArray<{ rules: string[]; allowed: string[]; refused: string[] }> = [
  { rules: ['10.0.0.0/8'], allowed: ['10.0.0.0', '10.1.2.3', '10.255.255.255'], refused: ['11.0.0.1', '9.255.255.255', '::1'] },
  // A dual-stack listener on :: reports IPv4 clients as IPv4-mapped IPv6 addresses.
  { rules: ['10.0.0.0/8'], allowed: ['::ffff:10.1.2.3', '::ffff:a01:203'], refused: ['::ffff:11.1.2.3', '::a01:203'] },
  { rules: ['127.0.0.1'], allowed: ['127.0.0.1', '::ffff:127.0.0.1'], refused: ['127.0.0.2', '::1'] },
  { rules: ['127.0.0.2/32'], allowed: ['127.0.0.2'], refused: ['127.0.0.1', '127.0.0.3'] },
  { rules: ['::1/128'], allowed: ['::1', '0:0:0:0:0:0:0:1'], refused: ['::2', '127.0.0.1'] },
  { rules: ['::1'], allowed: ['::1'], refused: ['::'] },
  { rules: ['fd00::/8'], allowed: ['fd00::1', 'fdff:ffff::1'], refused: ['fe00::1', 'fc00::1'] },
  { rules: ['0.0.0.0/0'], allowed: ['1.2.3.4', '255.255.255.255', '::ffff:8.8.8.8'], refused: ['::1', '2001:db8::1'] },
  { rules: ['::/0'], allowed: ['::1', '2001:db8::1'], refused: [] },
  // Host bits after the prefix are ignored, as ip(8) and nbdkit's ip filter read them.
  { rules: ['192.168.1.77/24'], allowed: ['192.168.1.1', '192.168.1.254'], refused: ['192.168.2.1'] },
  { rules: ['10.0.0.0/8', '::1'], allowed: ['10.9.9.9', '::1'], refused: ['127.0.0.1', '::2'] },
  { rules: [], allowed: [], refused: ['127.0.0.1', '::1'] },
];

for (const { rules, allowed, refused } of CASES) {
  t.test(`[${rules.join(', ')}]`, async (t) => {
    const list = new AccessList(rules);
    for (const address of allowed) t.ok(list.allows(address), `${address} is allowed`);
    for (const address of refused) t.notOk(list.allows(address), `${address} is refused`);
    t.strictSame(list.rules, rules, 'rules kept as given');
  });
}

t.test('a peer address that is not an IP address is refused, never thrown on', async (t) => {
  const list = new AccessList(['0.0.0.0/0', '::/0']);
  for (const peer of ['', 'unix', 'localhost', '1.2.3', '::g', '1.2.3.4 ']) t.notOk(list.allows(peer), JSON.stringify(peer));
});

const BAD: ReadonlyArray<[string, RegExp]> = [
  ['', /bad address range "": expected an IPv4 or IPv6 address/],
  ['abc', /bad address range "abc": expected an IPv4 or IPv6 address/],
  ['10.0.0', /expected an IPv4 or IPv6 address/],
  ['010.0.0.1', /expected an IPv4 or IPv6 address/],
  ['10.0.0.0/33', /"10.0.0.0\/33": the prefix length must be a number from 0 to 32/],
  ['::1/129', /the prefix length must be a number from 0 to 128/],
  ['10.0.0.0/', /the prefix length must be a number from 0 to 32/],
  ['10.0.0.0/8/8', /the prefix length/],
  ['10.0.0.0/-1', /the prefix length/],
  ['10.0.0.0/8.5', /the prefix length/],
  ['10.0.0.0/ 8', /the prefix length/],
  ['10.0.0.0/0x8', /the prefix length/],
  ['/8', /expected an IPv4 or IPv6 address/],
  ['fe80::1%eth0/64', /zone indexes/],
  ['host.example/8', /expected an IPv4 or IPv6 address/],
];

for (const [rule, message] of BAD) {
  t.test(`bad rule ${JSON.stringify(rule)} throws one line naming it`, async (t) => {
    t.throws(() => new AccessList(['127.0.0.1', rule]), { message });
  });
}
