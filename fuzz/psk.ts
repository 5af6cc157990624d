// The fuzzer's TLS credentials: one pre-shared key, written as the server's --tls-psk file
// (psktool's `username:hexkey`), and node:tls client options that use it.

import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { type ConnectionOptions, createSecureContext } from 'node:tls';

export interface PskCredentials {
  readonly identity: string;
  readonly key: Buffer;
  /** The `identity:hexkey` file: the server's --tls-psk and libnbd's tls-psk-file. */
  readonly file: string;
}

export const PSK_IDENTITY = 'fuzz';
/** TLS 1.3's SHA-256 suites and TLS 1.2's ECDHE-PSK one, as the server offers (lib/server/tls-credentials.ts). */
export const PSK_CIPHERS = 'TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:ECDHE-PSK-CHACHA20-POLY1305';

/** A new random 32-byte key for PSK_IDENTITY, written to DIR/fuzz.psk (mode 0600). */
export function makePsk(dir: string): PskCredentials {
  const key = randomBytes(32);
  const file = join(dir, 'fuzz.psk');
  writeFileSync(file, `${PSK_IDENTITY}:${key.toString('hex')}\n`, { mode: 0o600 });
  return { identity: PSK_IDENTITY, key, file };
}

/** node:tls client options for the key, TLS 1.2 or 1.3 (or only up to `maxVersion`). */
export function pskClientOptions(psk: PskCredentials, maxVersion?: 'TLSv1.2'): ConnectionOptions {
  return {
    // One context for every stream: making one per connection cost the fuzzer 2 % of its time.
    secureContext: createSecureContext(
      maxVersion === undefined ? { ciphers: PSK_CIPHERS } : { ciphers: PSK_CIPHERS, maxVersion },
    ),
    pskCallback: () => ({ identity: psk.identity, psk: psk.key }),
    checkServerIdentity: () => undefined,
  };
}
