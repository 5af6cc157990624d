// The `tls:` mapping (--tls, --tls-certificates, --tls-psk, --tls-verify-peer), with the rules
// loadTlsSettings enforces at start-up checked here first so they name a line: `on` and `require`
// need exactly one kind of credentials, `off` takes none, and verify-peer needs certificates.

import { TLS_MODES } from '../server/tls-credentials.js';
import type { ConfigValue } from './config-value.js';
import type { ServerConfig } from './server-config.js';
import { readPath } from './setting-values.js';

export type TlsConfig = NonNullable<ServerConfig['tls']>;

const TLS_KEYS = ['mode', 'certificates', 'psk', 'verify-peer'] as const;

/** The TLS settings in `value`; credential paths resolved against `dir`. */
export function readTls(value: ConfigValue, dir: string): TlsConfig {
  const fields = value.mapping(TLS_KEYS, 'a mapping such as { mode: require, certificates: DIR }');
  const mode = fields.require('mode', 'off, on or require').oneOf(TLS_MODES);
  const certificates = fields.optional('certificates', 'certificates', (v) => readPath(v, dir));
  const psk = fields.optional('psk', 'pskFile', (v) => readPath(v, dir));
  const verify = fields.optional('verify-peer', 'verifyPeer', (v) => v.boolean());
  if (mode === 'off') {
    const given =
      fields.get('certificates') ?? fields.get('psk') ?? (verify.verifyPeer === true ? fields.get('verify-peer') : undefined);
    given?.fail('TLS is off (tls.mode: off): set mode to on or require, or remove this');
  } else if (certificates.certificates === undefined && psk.pskFile === undefined) {
    value.fail(`mode ${mode} needs credentials: certificates: DIR or psk: FILE`);
  }
  if (certificates.certificates !== undefined) fields.get('psk')?.fail('TLS takes certificates or psk, not both');
  if (verify.verifyPeer === true && certificates.certificates === undefined) {
    fields.get('verify-peer')?.fail('needs certificates: DIR; with psk the key already proves who the client is');
  }
  return { mode, ...certificates, ...psk, ...verify };
}
