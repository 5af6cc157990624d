import t from 'tap';
import { parseConfig } from '../../lib/config/config-file.js';
import { addressKey, describeAddress } from '../../lib/config/read-listeners.js';
import { CONFIG_FILE, configError, yaml } from '../helpers/config-text.js';

const EXPORTS = 'exports: { golden: { base: golden.img } }\n';

t.test('TCP and unix listeners, in the order given; unix paths resolve against the file', async (t) => {
  const text = yaml`
    listen:
      - tcp: 0.0.0.0:10809
      - tcp: "[::]:10809"
      - unix: nbd.sock
        socket-mode: "0660"
        socket-group: 1001
      - unix: /run/nbd-cow/other.sock
  `;
  t.strictSame(parseConfig(text + EXPORTS, CONFIG_FILE).listen, [
    { address: { kind: 'tcp', host: '0.0.0.0', port: 10809 } },
    { address: { kind: 'tcp', host: '::', port: 10809 } },
    { address: { kind: 'unix', path: '/etc/nbd-cow/nbd.sock' }, socketMode: 0o660, socketGroup: 1001 },
    { address: { kind: 'unix', path: '/run/nbd-cow/other.sock' } },
  ]);
});

t.test('listen must be a non-empty list', async (t) => {
  t.equal(
    configError(`listen:\n  tcp: 127.0.0.1:10809\n${EXPORTS}`).message,
    `${CONFIG_FILE}:1:1: listen: expected a list of listeners, such as - tcp: 0.0.0.0:10809, not a mapping`,
  );
  t.equal(
    configError(`listen: []\n${EXPORTS}`).message,
    `${CONFIG_FILE}:1:1: listen: the list is empty: the server needs somewhere to listen`,
  );
});

t.test('each listener is tcp: or unix:, exactly one', async (t) => {
  t.equal(
    configError(`listen:\n  - socket-mode: "0660"\n${EXPORTS}`).message,
    `${CONFIG_FILE}:2:5: listen[0]: a listener needs tcp: HOST:PORT or unix: PATH`,
  );
  t.equal(
    configError(`listen:\n  - tcp: 127.0.0.1:10809\n    unix: /run/nbd.sock\n${EXPORTS}`).message,
    `${CONFIG_FILE}:3:5: listen[0].unix: a listener is tcp: or unix:, not both: make it two items`,
  );
  t.equal(
    configError(`listen:\n  - 127.0.0.1:10809\n${EXPORTS}`).message,
    `${CONFIG_FILE}:2:5: listen[0]: expected a listener: tcp: HOST:PORT or unix: PATH, not the text "127.0.0.1:10809"`,
  );
  t.equal(
    configError(`listen:\n  - tpc: 127.0.0.1:10809\n${EXPORTS}`).message,
    `${CONFIG_FILE}:2:5: listen[0].tpc: unknown key "tpc" (did you mean "tcp"?)`,
  );
});

t.test('a bad address names the listener', async (t) => {
  t.equal(
    configError(`listen:\n  - tcp: 10809\n${EXPORTS}`).message,
    `${CONFIG_FILE}:2:5: listen[0].tcp: expected HOST:PORT, such as 127.0.0.1:10809 or [::1]:10809, not the number 10809`,
  );
  t.equal(
    configError(`listen:\n  - unix: ""\n${EXPORTS}`).message,
    `${CONFIG_FILE}:2:5: listen[0].unix: expected a path, not an empty string`,
  );
});

t.test('socket-mode and socket-group belong to unix listeners only', async (t) => {
  for (const key of ['socket-mode: "0660"', 'socket-group: nbd']) {
    t.equal(
      configError(`listen:\n  - unix: /run/a.sock\n  - tcp: 127.0.0.1:10809\n    ${key}\n${EXPORTS}`).message,
      `${CONFIG_FILE}:4:5: listen[1].${key.split(':')[0]}: only a unix: listener has a socket file to set this on`,
    );
  }
  t.equal(
    configError(`listen:\n  - unix: /run/a.sock\n    socket-mode: 660\n${EXPORTS}`).message,
    `${CONFIG_FILE}:3:5: listen[0].socket-mode: expected an octal mode from "0" to "0777", such as "0660" (quoted) or 0o660, not the number 660`,
  );
});

t.test('two listeners on one address are refused, naming the first', async (t) => {
  const text = yaml`
    listen:
      - tcp: 0.0.0.0:10809
      - unix: /run/nbd.sock
      - tcp: 0.0.0.0:10809
  `;
  t.equal(
    configError(text + EXPORTS).message,
    `${CONFIG_FILE}:4:5: listen[2]: the same address as listen[0] on line 2: 0.0.0.0:10809`,
  );
  const unix = 'listen:\n  - unix: nbd.sock\n  - unix: /etc/nbd-cow/nbd.sock\n';
  t.equal(
    configError(unix + EXPORTS).message,
    `${CONFIG_FILE}:3:5: listen[1]: the same address as listen[0] on line 2: /etc/nbd-cow/nbd.sock`,
    'the same socket file once resolved',
  );
  const ipv6 = 'listen:\n  - tcp: "[::1]:10809"\n  - tcp: "[::1]:10809"\n';
  t.match(configError(ipv6 + EXPORTS).message, /listen\[1\]: the same address as listen\[0\] on line 2: \[::1\]:10809$/);
});

t.test('TCP port 0 picks a new port each time: two of them do not clash', async (t) => {
  const text = 'listen:\n  - tcp: 127.0.0.1:0\n  - tcp: 127.0.0.1:0\n';
  t.equal(parseConfig(text + EXPORTS, CONFIG_FILE).listen.length, 2);
  t.equal(addressKey({ kind: 'tcp', host: '127.0.0.1', port: 0 }), undefined);
  t.equal(describeAddress({ kind: 'tcp', host: 'fd00::1', port: 1 }), '[fd00::1]:1');
});
