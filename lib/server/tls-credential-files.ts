// Reading the credential files at start: PEM certificates and keys (parsed by node:crypto, so
// that a bad file is named with its problem instead of surfacing as an OpenSSL code at the first
// handshake) and psktool's `username:hexkey` file. Errors are one line naming the file; a key's
// text never appears in them.

import { createPrivateKey, type KeyObject, X509Certificate } from 'node:crypto';
import { readFile } from 'node:fs/promises';

/** RFC 4279 section 5.3: identities of up to 128 bytes MUST be supported; none longer is accepted. */
export const MAX_IDENTITY_BYTES = 128;
/** 128 bits at least (psktool makes 256); at most 256 bytes, below every OpenSSL's limit. */
const MIN_PSK_BYTES = 16;
const MAX_PSK_BYTES = 256;

/** The reason a file could not be read, in words. */
export function unreadable(what: string, path: string, err: unknown): Error {
  const code = (err as NodeJS.ErrnoException).code ?? '';
  const reason =
    code === 'ENOENT'
      ? 'does not exist'
      : code === 'EISDIR'
        ? 'is a directory, not a file'
        : code === 'EACCES' || code === 'EPERM'
          ? 'cannot be read (permission denied)'
          : `cannot be read (${code || String(err)})`;
  return new Error(`${what} ${path} ${reason}`);
}

async function readText(what: string, path: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (err) {
    throw unreadable(what, path, err);
  }
}

const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g;

/** Every certificate in a PEM file, parsed (a chain or a CA bundle holds several). */
export async function readCertificates(path: string): Promise<{ pem: string; certs: X509Certificate[] }> {
  const pem = await readText('TLS certificate file', path);
  const blocks = pem.match(PEM_CERTIFICATE) ?? [];
  if (blocks.length === 0) throw new Error(`TLS certificate file ${path} holds no PEM certificate`);
  const certs = blocks.map((block, i) => {
    try {
      return new X509Certificate(block);
    } catch (err) {
      throw new Error(`TLS certificate file ${path}: certificate ${i + 1} is not valid (${(err as Error).message})`);
    }
  });
  return { pem, certs };
}

export async function readPrivateKey(path: string): Promise<{ pem: string; key: KeyObject }> {
  const pem = await readText('TLS key file', path);
  // PKCS#8 and the older OpenSSL form; OpenSSL itself only says "interrupted or cancelled".
  if (/-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: 4,ENCRYPTED/.test(pem)) {
    throw new Error(`TLS key file ${path} is encrypted; nbd-cow needs it without a passphrase`);
  }
  try {
    return { pem, key: createPrivateKey({ key: pem, format: 'pem' }) };
  } catch (err) {
    // OpenSSL's words name the problem, never the key's bytes.
    throw new Error(`TLS key file ${path} holds no usable PEM private key (${(err as Error).message})`);
  }
}

/**
 * psktool's file: one `username:hexkey` line per user. Blank lines and `#` comments are skipped.
 * Errors name the line, never its content: the key is secret.
 */
export async function readPskFile(path: string): Promise<Map<string, Buffer>> {
  const text = await readText('TLS PSK file', path);
  const keys = new Map<string, Buffer>();
  const lineOf = new Map<string, number>();
  const lines = text.split('\n');
  for (const [index, raw] of lines.entries()) {
    const line = raw.endsWith('\r') ? raw.slice(0, -1) : raw;
    if (line.trim() === '' || line.startsWith('#')) continue;
    const at = `TLS PSK file ${path} line ${index + 1}`;
    const colon = line.indexOf(':');
    if (colon < 0) throw new Error(`${at}: expected username:hexkey`);
    const user = line.slice(0, colon);
    const hex = line.slice(colon + 1);
    if (user === '' || /[\p{Cc}\s]/u.test(user))
      throw new Error(`${at}: the username is empty or holds spaces or control characters`);
    if (Buffer.byteLength(user) > MAX_IDENTITY_BYTES)
      throw new Error(`${at}: the username is longer than ${MAX_IDENTITY_BYTES} bytes`);
    const first = lineOf.get(user);
    if (first !== undefined) throw new Error(`${at}: user ${user} is already on line ${first}`);
    if (hex.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(hex))
      throw new Error(`${at}: the key is not an even number of hex digits`);
    const bytes = hex.length / 2;
    if (bytes < MIN_PSK_BYTES || bytes > MAX_PSK_BYTES) {
      throw new Error(`${at}: the key is ${bytes} bytes; it must be ${MIN_PSK_BYTES} to ${MAX_PSK_BYTES} (psktool makes 32)`);
    }
    keys.set(user, Buffer.from(hex, 'hex'));
    lineOf.set(user, index + 1);
  }
  if (keys.size === 0) throw new Error(`TLS PSK file ${path} holds no username:hexkey line`);
  return keys;
}
