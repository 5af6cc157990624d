import t from 'tap';
import { ConfigError } from '../../lib/config/config-error.js';
import type { ConfigValue } from '../../lib/config/config-value.js';
import { readAccount, readAllowList, readHostPort, readPath, readSize, readSocketMode } from '../../lib/config/setting-values.js';
import { parseYamlDocument } from '../../lib/config/yaml-document.js';
import { CONFIG_FILE } from '../helpers/config-text.js';

/** The value of `x:` in `x: ${yamlValue}`. */
function x(yamlValue: string): ConfigValue {
  const value = parseYamlDocument(`x: ${yamlValue}\n`, CONFIG_FILE).mapping().get('x');
  if (value === undefined) throw new Error('no x');
  return value;
}

/** The reason (the message without `FILE:1:1: x: `) that `read` throws. */
function reason(read: () => unknown): string {
  try {
    read();
  } catch (err) {
    if (err instanceof ConfigError) return err.message.replace(`${CONFIG_FILE}:1:1: x: `, '');
    throw err;
  }
  throw new Error('no error');
}

t.test('sizes: a number of bytes, or a size string as the flags take it', async (t) => {
  t.equal(readSize(x('4096')), 4096);
  t.equal(readSize(x('0')), 0);
  t.equal(readSize(x('20G')), 20 * 1024 ** 3);
  t.equal(readSize(x('"64k"')), 64 * 1024);
  const expected = 'expected a size such as 4096, 64K, 512M or 20G (K, M, G, T: powers of 1024)';
  t.equal(
    reason(() => readSize(x('-1'))),
    `${expected}, not the number -1`,
  );
  t.equal(
    reason(() => readSize(x('1.5'))),
    `${expected}, not the number 1.5`,
  );
  t.equal(
    reason(() => readSize(x('true'))),
    `${expected}, not true`,
  );
  t.equal(
    reason(() => readSize(x('[1]'))),
    `${expected}, not a list`,
  );
  t.equal(
    reason(() => readSize(x('1e20'))),
    `${expected}, not the number 1e20`,
  );
  t.equal(
    reason(() => readSize(x('20 GB'))),
    'expected a size in bytes such as 4096, 64K, 512M or 10G (K, M, G, T: powers of 1024), not the text "20 GB"',
  );
  t.equal(
    reason(() => readSize(x('9999999999T'))),
    '9999999999T is too large (at most 9007199254740991 bytes)',
  );
  t.equal(
    reason(() => readSize(x('100'), (n) => (n < 512 ? `${n} is too small` : undefined))),
    '100 is too small',
  );
});

t.test('paths: relative ones resolve against the file directory; only their form is checked', async (t) => {
  t.equal(readPath(x('images/debian.img'), '/etc/nbd-cow'), '/etc/nbd-cow/images/debian.img');
  t.equal(readPath(x('../srv/a.img'), '/etc/nbd-cow'), '/etc/srv/a.img');
  t.equal(readPath(x('/srv/a.img'), '/etc/nbd-cow'), '/srv/a.img');
  t.equal(readPath(x('/no/such/file'), '/etc'), '/no/such/file', 'not looked at');
  t.equal(
    reason(() => readPath(x('""'), '/etc')),
    'expected a path, not an empty string',
  );
  t.equal(
    reason(() => readPath(x('42'), '/etc')),
    'expected a path, not the number 42',
  );
  t.equal(
    reason(() => readPath(x('"a\\0b"'), '/etc')),
    'a path cannot contain a NUL character',
  );
});

t.test('HOST:PORT addresses', async (t) => {
  t.strictSame(readHostPort(x('127.0.0.1:9810')), { host: '127.0.0.1', port: 9810 });
  t.strictSame(readHostPort(x('"[::1]:9810"')), { host: '::1', port: 9810 });
  t.equal(
    reason(() => readHostPort(x('9810'))),
    'expected HOST:PORT, such as 127.0.0.1:10809 or [::1]:10809, not the number 9810',
  );
  t.equal(
    reason(() => readHostPort(x('localhost'))),
    'expected HOST:PORT, such as 127.0.0.1:9810 or [::1]:9810, not the text "localhost"',
  );
  t.equal(
    reason(() => readHostPort(x('host:70000'))),
    'expected a port number from 0 to 65535, not the text "host:70000"',
  );
});

t.test('allow lists: addresses and CIDR ranges, each checked as --allow checks it', async (t) => {
  t.strictSame(readAllowList(x('[10.0.0.0/8, "::1", fd00::/8]')), ['10.0.0.0/8', '::1', 'fd00::/8']);
  t.equal(
    reason(() => readAllowList(x('10.0.0.0/8'))),
    'expected a list of addresses or CIDR ranges, such as [10.0.0.0/8, "::1"], not the text "10.0.0.0/8"',
  );
  t.equal(
    reason(() => readAllowList(x('[]'))),
    'an empty list admits no TCP client; leave allow out to admit everyone',
  );
  const value = parseYamlDocument('x:\n  - 10.0.0.0/8\n  - 10.0.0.0/33\n  - 7\n', CONFIG_FILE).mapping().get('x');
  t.throws(() => readAllowList(value as ConfigValue), {
    message: `${CONFIG_FILE}:3:5: x[1]: bad address range "10.0.0.0/33": the prefix length must be a number from 0 to 32`,
  });
  t.throws(() => readAllowList(x('[lab.example.org]')), {
    message: `${CONFIG_FILE}:1:5: x[0]: bad address range "lab.example.org": expected an IPv4 or IPv6 address, optionally /PREFIX`,
  });
  t.throws(() => readAllowList(x('[7]')), {
    message: /x\[0\]: expected an address or CIDR range, such as 10.0.0.0\/8, not the number 7$/,
  });
});

t.test('socket modes in octal, however written, except a plain decimal number', async (t) => {
  const octal: [string, number][] = [
    ['"0660"', 0o660],
    ['"660"', 0o660],
    ['"0o660"', 0o660],
    ['0660', 0o660],
    ['0o660', 0o660],
    ['"0"', 0],
    ['0', 0],
    ['0777', 0o777],
    ["'600'", 0o600],
  ];
  for (const [text, mode] of octal) t.equal(readSocketMode(x(text)), mode, text);
  const expected = 'expected an octal mode from "0" to "0777", such as "0660" (quoted) or 0o660';
  t.equal(
    reason(() => readSocketMode(x('432'))),
    `${expected}, not the number 432`,
    'decimal: 0o660, or a typo for 0432?',
  );
  t.equal(
    reason(() => readSocketMode(x('440'))),
    `${expected}, not the number 440`,
    'would be 0o670',
  );
  t.equal(
    reason(() => readSocketMode(x('"0990"'))),
    `${expected}, not the text "0990"`,
  );
  t.equal(
    reason(() => readSocketMode(x('"1777"'))),
    `${expected}, not the text "1777"`,
    'no sticky or set-id bits',
  );
  t.equal(
    reason(() => readSocketMode(x('0x1b0'))),
    `${expected}, not the number 0x1b0`,
  );
  t.equal(
    reason(() => readSocketMode(x('true'))),
    `${expected}, not true`,
  );
});

t.test('users and groups: a name, or an id as a number or digits', async (t) => {
  t.equal(readAccount(x('nbd'), 'user'), 'nbd');
  t.equal(readAccount(x('"1000"'), 'user'), '1000', 'digits stay text; the lookup reads them as an id, as chown does');
  t.equal(readAccount(x('1000'), 'group'), 1000);
  t.equal(readAccount(x('0'), 'user'), 0);
  t.equal(
    reason(() => readAccount(x('-1'), 'user')),
    'expected a user name or an id from 0 to 4294967294',
  );
  t.equal(
    reason(() => readAccount(x('4294967295'), 'group')),
    'expected a group name or an id from 0 to 4294967294',
  );
  t.equal(
    reason(() => readAccount(x('1.5'), 'user')),
    'expected a user name or an id from 0 to 4294967294',
  );
  t.equal(
    reason(() => readAccount(x('""'), 'group')),
    'expected a group name or id, not an empty string',
  );
  t.equal(
    reason(() => readAccount(x('[nbd]'), 'group')),
    'expected a group name or id, not a list',
  );
});
