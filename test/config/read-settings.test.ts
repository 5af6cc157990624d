import t, { type Test } from 'tap';
import { parseConfig } from '../../lib/config/config-file.js';
import { CONFIG_FILE, configError, MINIMAL } from '../helpers/config-text.js';

/** The reason parseConfig gives for MINIMAL plus `line` (line 6), with its location checked. */
function refused(t: Test, line: string, keyPath: string, column = 1): string {
  const err = configError(`${MINIMAL}${line}\n`);
  t.equal(err.line, 6, `${line}: line`);
  t.equal(err.column, column, `${line}: column`);
  t.equal(err.keyPath, keyPath, `${line}: key path`);
  t.equal(err.message, `${CONFIG_FILE}:6:${column}: ${keyPath}: ${err.reason}`);
  return err.reason;
}

/** The settings MINIMAL plus `lines` make. */
function settings(lines: string) {
  return parseConfig(`${MINIMAL}${lines}\n`, CONFIG_FILE);
}

t.test('every server-wide setting, as the flag of the same name takes it', async (t) => {
  const config = settings(
    [
      'allow: [10.0.0.0/8]',
      'max-connections: 10',
      'handshake-timeout: 0.5',
      'buffer-memory: 67108864',
      'user: 1000',
      'group: "nbd"',
      'log: { level: silent, format: text }',
      'metrics: "[::1]:9810"',
    ].join('\n'),
  );
  t.strictSame(
    { ...config, listen: [], exports: [] },
    {
      source: CONFIG_FILE,
      listen: [],
      exports: [],
      allow: ['10.0.0.0/8'],
      maxConnections: 10,
      handshakeTimeout: 0.5,
      bufferMemory: 64 * 1024 ** 2,
      user: 1000,
      group: 'nbd',
      logLevel: 'silent',
      logFormat: 'text',
      metrics: { host: '::1', port: 9810 },
    },
  );
  t.strictSame(settings('log: { format: json }').logFormat, 'json');
  t.equal(settings('log: { format: json }').logLevel, undefined, 'a level left out stays out');
});

t.test('allow: a list of ranges, each checked', async (t) => {
  t.equal(
    refused(t, 'allow: 10.0.0.0/8', 'allow'),
    'expected a list of addresses or CIDR ranges, such as [10.0.0.0/8, "::1"], not the text "10.0.0.0/8"',
  );
  t.equal(
    refused(t, 'allow: [10.0.0.0/8, 300.0.0.0/8]', 'allow[1]', 21),
    'bad address range "300.0.0.0/8": expected an IPv4 or IPv6 address, optionally /PREFIX',
  );
});

t.test('max-connections: a positive integer', async (t) => {
  t.equal(refused(t, 'max-connections: 0', 'max-connections'), 'the connection limit must be a positive integer, not 0');
  t.equal(refused(t, 'max-connections: 2.5', 'max-connections'), 'the connection limit must be a positive integer, not 2.5');
  t.equal(refused(t, 'max-connections: "10"', 'max-connections'), 'expected a number of connections, not the text "10"');
});

t.test('handshake-timeout: seconds above 0, at most a day', async (t) => {
  t.equal(refused(t, 'handshake-timeout: 0', 'handshake-timeout'), 'expected a number of seconds above 0, at most 86400, not 0');
  t.equal(
    refused(t, 'handshake-timeout: 86401', 'handshake-timeout'),
    'expected a number of seconds above 0, at most 86400, not 86401',
  );
  t.equal(
    refused(t, 'handshake-timeout: 10s', 'handshake-timeout'),
    'expected a number of seconds, such as 10, not the text "10s"',
  );
  t.equal(settings('handshake-timeout: 86400').handshakeTimeout, 86400);
});

t.test('buffer-memory: a size of at least the largest request', async (t) => {
  t.equal(settings('buffer-memory: 1G').bufferMemory, 1024 ** 3);
  t.equal(refused(t, 'buffer-memory: 32M', 'buffer-memory'), '33554432 bytes is less than 64M, the largest request');
});

t.test('user and group: a name or an id', async (t) => {
  t.equal(refused(t, 'user: -5', 'user'), 'expected a user name or an id from 0 to 4294967294');
  t.equal(refused(t, 'group: ""', 'group'), 'expected a group name or id, not an empty string');
});

t.test('log: level and format from their lists', async (t) => {
  t.equal(refused(t, 'log: debug', 'log'), 'expected a mapping such as { level: info, format: json }, not the text "debug"');
  t.equal(
    refused(t, 'log: { level: verbose }', 'log.level', 8),
    'expected "debug", "info", "warn", "error" or "silent", not the text "verbose"',
  );
  t.equal(refused(t, 'log: { format: xml }', 'log.format', 8), 'expected "text" or "json", not the text "xml"');
  t.equal(refused(t, 'log: { levle: info }', 'log.levle', 8), 'unknown key "levle" (did you mean "level"?)');
});

t.test('metrics: HOST:PORT', async (t) => {
  t.equal(
    refused(t, 'metrics: 9810', 'metrics'),
    'expected HOST:PORT, such as 127.0.0.1:10809 or [::1]:10809, not the number 9810',
  );
  t.equal(refused(t, 'metrics: true', 'metrics'), 'expected HOST:PORT, such as 127.0.0.1:10809 or [::1]:10809, not true');
});
