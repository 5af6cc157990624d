import t from 'tap';
import { parseConfig } from '../../lib/config/config-file.js';
import { CONFIG_FILE, configError, MINIMAL } from '../helpers/config-text.js';

/** MINIMAL (5 lines) followed by `tls` (its first line is line 6). */
function withTls(tls: string): string {
  return `${MINIMAL}${tls}`;
}

t.test('certificates or a PSK file, paths resolved against the file', async (t) => {
  t.strictSame(parseConfig(withTls('tls:\n  mode: require\n  certificates: tls\n'), CONFIG_FILE).tls, {
    mode: 'require',
    certificates: '/etc/nbd-cow/tls',
  });
  t.strictSame(parseConfig(withTls('tls: { mode: on, psk: /etc/nbd-cow/keys.psk }\n'), CONFIG_FILE).tls, {
    mode: 'on',
    pskFile: '/etc/nbd-cow/keys.psk',
  });
  t.strictSame(parseConfig(withTls('tls: { mode: on, certificates: /tls, verify-peer: true }\n'), CONFIG_FILE).tls, {
    mode: 'on',
    certificates: '/tls',
    verifyPeer: true,
  });
  t.strictSame(parseConfig(withTls('tls: { mode: off, verify-peer: false }\n'), CONFIG_FILE).tls, {
    mode: 'off',
    verifyPeer: false,
  });
  t.equal(parseConfig(MINIMAL, CONFIG_FILE).tls, undefined, 'no tls: mapping, no tls setting');
});

t.test('the mode is required and is off, on or require', async (t) => {
  t.equal(
    configError(withTls('tls:\n  certificates: /tls\n')).message,
    `${CONFIG_FILE}:6:1: tls.mode: missing (off, on or require)`,
  );
  t.equal(
    configError(withTls('tls:\n  mode: true\n')).message,
    `${CONFIG_FILE}:7:3: tls.mode: expected "off", "on" or "require", not true`,
  );
  t.equal(
    configError(withTls('tls: on\n')).message,
    `${CONFIG_FILE}:6:1: tls: expected a mapping such as { mode: require, certificates: DIR }, not the text "on"`,
  );
  t.equal(
    configError(withTls('tls:\n  mode: on\n  cert: /tls\n')).message,
    `${CONFIG_FILE}:8:3: tls.cert: unknown key "cert"; the keys here are mode, certificates, psk, verify-peer`,
  );
});

t.test('on and require need exactly one kind of credentials', async (t) => {
  t.equal(
    configError(withTls('tls:\n  mode: require\n')).message,
    `${CONFIG_FILE}:6:1: tls: mode require needs credentials: certificates: DIR or psk: FILE`,
  );
  t.equal(
    configError(withTls('tls:\n  mode: on\n  certificates: /tls\n  psk: /keys.psk\n')).message,
    `${CONFIG_FILE}:9:3: tls.psk: TLS takes certificates or psk, not both`,
  );
});

t.test('credentials with TLS off are an error, not ignored', async (t) => {
  for (const [line, key] of [
    ['certificates: /tls', 'certificates'],
    ['psk: /keys.psk', 'psk'],
    ['verify-peer: true', 'verify-peer'],
  ]) {
    t.equal(
      configError(withTls(`tls:\n  mode: off\n  ${line}\n`)).message,
      `${CONFIG_FILE}:8:3: tls.${key}: TLS is off (tls.mode: off): set mode to on or require, or remove this`,
    );
  }
});

t.test('verify-peer checks client certificates, so it needs certificates', async (t) => {
  t.equal(
    configError(withTls('tls:\n  mode: on\n  psk: /keys.psk\n  verify-peer: true\n')).message,
    `${CONFIG_FILE}:9:3: tls.verify-peer: needs certificates: DIR; with psk the key already proves who the client is`,
  );
  t.equal(
    configError(withTls('tls:\n  mode: on\n  certificates: /tls\n  verify-peer: "yes"\n')).message,
    `${CONFIG_FILE}:9:3: tls.verify-peer: expected true or false, not the text "yes"`,
  );
});

t.test('credential paths are checked for form', async (t) => {
  t.equal(
    configError(withTls('tls:\n  mode: on\n  certificates: 7\n')).message,
    `${CONFIG_FILE}:8:3: tls.certificates: expected a path, not the number 7`,
  );
});
