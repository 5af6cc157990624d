import t from 'tap';
import { parseHostPort, parsePort } from '../lib/host-port.js';

t.test('HOST:PORT and [IPv6]:PORT', async (t) => {
  t.strictSame(parseHostPort('127.0.0.1:9810'), { host: '127.0.0.1', port: 9810 });
  t.strictSame(parseHostPort('lab1.example.org:10809'), { host: 'lab1.example.org', port: 10809 });
  t.strictSame(parseHostPort('[::1]:9810'), { host: '::1', port: 9810 });
  t.strictSame(parseHostPort('[fd00::1:2]:0'), { host: 'fd00::1:2', port: 0 }, 'port 0 picks a free one');
  t.strictSame(parseHostPort('0.0.0.0:65535'), { host: '0.0.0.0', port: 65535 });
});

t.test('anything else is a plain Error saying what is expected', async (t) => {
  for (const value of [
    '',
    '127.0.0.1',
    ':9810',
    '::1:9810',
    '[::1]',
    '[]:9810',
    'host:port',
    'a:b:1',
    'host: 1',
    '127.0.0.1:-1',
  ]) {
    t.throws(
      () => parseHostPort(value),
      { name: 'Error', message: 'expected HOST:PORT, such as 127.0.0.1:9810 or [::1]:9810' },
      value,
    );
  }
  t.throws(() => parseHostPort('127.0.0.1:65536'), { message: 'expected a port number from 0 to 65535' });
});

t.test('ports are decimal digits from 0 to 65535', async (t) => {
  t.equal(parsePort('0'), 0);
  t.equal(parsePort('10809'), 10809);
  t.equal(parsePort('65535'), 65535);
  for (const value of ['', '65536', '-1', '1e3', '0x10', ' 80', '80 ', '8.0', '99999999999999999999']) {
    t.throws(() => parsePort(value), { message: 'expected a port number from 0 to 65535' }, JSON.stringify(value));
  }
});
