// TLS credentials for NBD_OPT_STARTTLS: X.509 certificates (nbdkit's directory layout) or
// pre-shared keys (the `username:hexkey` file libnbd, qemu and nbdkit use), loaded and checked
// once at start, and the identity a client proved in its handshake.
//
// node:tls does the cryptography; tls-credential-files.ts reads and checks the files.
// Versions and cipher suites, and what the real clients negotiate with them: doc/tls.md.

import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import tls from 'node:tls';
import { MAX_IDENTITY_BYTES, readCertificates, readPrivateKey, readPskFile, unreadable } from './tls-credential-files.js';

/** off: NOTLS; on: TLS at the client's choice (SELECTIVETLS); require: TLS before anything (FORCEDTLS). */
export type TlsMode = 'off' | 'on' | 'require';
export const TLS_MODES: readonly TlsMode[] = ['off', 'on', 'require'];

/** What the server does about TLS: the mode, and the credentials when it is not off. */
export interface TlsSettings {
  readonly mode: TlsMode;
  readonly credentials: TlsCredentials | null;
}

export const NO_TLS: TlsSettings = { mode: 'off', credentials: null };

export interface TlsCredentials {
  /** How clients prove who they are: certificates or pre-shared keys. */
  readonly kind: 'x509' | 'psk';
  /** Options for `new tls.TLSSocket(socket, options)` on the server side of one connection. */
  socketOptions(): tls.TLSSocketOptions;
  /**
   * The client's identity after a successful handshake: the PSK username, or (x509 with
   * verify-peer) the verified certificate's subject CN, else its first DNS/email SAN;
   * undefined when there is none.
   */
  identityOf(socket: tls.TLSSocket): string | undefined;
  /**
   * Why a handshake that completed must still be refused, or undefined: with verify-peer, a
   * client certificate that does not chain to ca-cert.pem (a TLSSocket made by hand completes
   * such a handshake; only a tls.Server would refuse it).
   */
  refusal(socket: tls.TLSSocket): string | undefined;
}

export interface TlsCredentialOptions {
  /** Directory with ca-cert.pem, server-cert.pem and server-key.pem (nbdkit's layout). */
  readonly certificates?: string;
  /** File of `username:hexkey` lines (psktool's format). */
  readonly pskFile?: string;
  /**
   * Ask every client for a certificate signed by ca-cert.pem: one without a certificate fails the
   * handshake; one whose certificate does not verify gets no identity (identityOf: undefined).
   */
  readonly verifyPeer?: boolean;
}

/** proto.md: "MUST support TLS version 1.2"; nothing older is offered. */
const MIN_VERSION = 'TLSv1.2';
/**
 * PSK cipher suites (Node enables none by default), all with an ephemeral key exchange: a key that
 * leaks later does not open recorded sessions, so plain-PSK suites are left out. TLS 1.3: the
 * SHA-256 suites, the only ones OpenSSL's PSK callback serves. TLS 1.2: ECDHE-PSK with
 * ChaCha20, the one ECDHE-PSK AEAD suite OpenSSL and GnuTLS share, then DHE-PSK with AES-GCM for
 * clients without ChaCha20 (GnuTLS in FIPS mode). What each client picks: doc/tls.md.
 */
const PSK_CIPHERS = [
  'TLS_AES_128_GCM_SHA256',
  'TLS_CHACHA20_POLY1305_SHA256',
  'ECDHE-PSK-CHACHA20-POLY1305',
  'DHE-PSK-AES256-GCM-SHA384',
  'DHE-PSK-AES128-GCM-SHA256',
].join(':');
/**
 * The server's TLS settings from its options: the mode, and the credentials loaded when it is not
 * off. Credentials with mode off, and on/require without credentials, are errors rather than
 * guesses: a server the operator believes encrypted must not run in clear text.
 */
export async function loadTlsSettings(
  options: (TlsCredentialOptions & { readonly mode: TlsMode }) | undefined,
): Promise<TlsSettings> {
  const mode = options?.mode ?? 'off';
  if (!TLS_MODES.includes(mode)) throw new Error(`TLS mode ${JSON.stringify(mode)} is not one of ${TLS_MODES.join(', ')}`);
  const given = options?.certificates !== undefined || options?.pskFile !== undefined || options?.verifyPeer === true;
  if (mode === 'off') {
    if (given) throw new Error('TLS credentials were given but TLS is off: add --tls on or --tls require');
    return { mode, credentials: null };
  }
  if (options?.certificates === undefined && options?.pskFile === undefined) {
    throw new Error(`--tls ${mode} needs credentials: --tls-certificates DIR or --tls-psk FILE`);
  }
  return { mode, credentials: await loadTlsCredentials(options) };
}

/** Load and check the credentials once at start; a problem is one line naming the file. */
export async function loadTlsCredentials(options: TlsCredentialOptions): Promise<TlsCredentials> {
  const { certificates, pskFile } = options;
  const verifyPeer = options.verifyPeer ?? false;
  if (certificates !== undefined && pskFile !== undefined) {
    throw new Error('TLS takes certificates (--tls-certificates) or a PSK file (--tls-psk), not both');
  }
  if (pskFile !== undefined) {
    if (verifyPeer)
      throw new Error('--tls-verify-peer needs --tls-certificates: with --tls-psk the key already proves who the client is');
    return new PskCredentials(await readPskFile(pskFile));
  }
  if (certificates === undefined) throw new Error('TLS needs credentials: --tls-certificates DIR or --tls-psk FILE');
  return new X509Credentials(await loadCertificates(certificates, verifyPeer), verifyPeer);
}

class PskCredentials implements TlsCredentials {
  readonly kind = 'psk';
  readonly #keys: ReadonlyMap<string, Buffer>;
  readonly #context: tls.SecureContext;
  /** The user each socket proved (pskCallback runs during the handshake, identityOf after it). */
  readonly #users = new WeakMap<tls.TLSSocket, string>();

  constructor(keys: ReadonlyMap<string, Buffer>) {
    this.#keys = keys;
    // dhparam 'auto': OpenSSL's built-in group sized to the security level, for the DHE-PSK suites.
    this.#context = tls.createSecureContext({ minVersion: MIN_VERSION, ciphers: PSK_CIPHERS, dhparam: 'auto' });
  }

  socketOptions(): tls.TLSSocketOptions {
    const options: tls.TLSSocketOptions & Pick<tls.TlsOptions, 'pskCallback'> = {
      isServer: true,
      secureContext: this.#context,
      // An unknown user gets no key: TLS 1.2 fails the handshake, TLS 1.3 falls back to a
      // certificate, which there is none of, and fails too.
      pskCallback: (socket, identity) => {
        const key = this.#keys.get(identity);
        if (key === undefined) return null;
        this.#users.set(socket, identity);
        return key;
      },
    };
    return options;
  }

  identityOf(socket: tls.TLSSocket): string | undefined {
    return this.#users.get(socket);
  }

  refusal(): string | undefined {
    // A handshake completes only with a key from the file.
    return undefined;
  }
}

class X509Credentials implements TlsCredentials {
  readonly kind = 'x509';
  readonly #context: tls.SecureContext;
  readonly #verifyPeer: boolean;

  constructor(context: tls.SecureContext, verifyPeer: boolean) {
    this.#context = context;
    this.#verifyPeer = verifyPeer;
  }

  socketOptions(): tls.TLSSocketOptions {
    return {
      isServer: true,
      secureContext: this.#context,
      requestCert: this.#verifyPeer,
      rejectUnauthorized: this.#verifyPeer,
    };
  }

  refusal(socket: tls.TLSSocket): string | undefined {
    if (!this.#verifyPeer) return undefined;
    const cert: tls.PeerCertificate | null = socket.getPeerCertificate();
    if (cert?.raw === undefined) return 'the client sent no certificate';
    return peerVerified(socket) ? undefined : 'the client certificate is not signed by ca-cert.pem';
  }

  identityOf(socket: tls.TLSSocket): string | undefined {
    if (!this.#verifyPeer) return undefined;
    // null once the socket is destroyed, {} before a certificate arrived. Checked before the
    // verdict: asking the handle for it with no certificate and no session crashes Node 20.
    const cert: tls.PeerCertificate | null = socket.getPeerCertificate();
    if (cert?.raw === undefined || !peerVerified(socket)) return undefined;
    const subject: unknown = cert.subject;
    const cn = typeof subject === 'object' && subject !== null ? (subject as Record<string, unknown>)['CN'] : undefined;
    // Several CNs arrive as an array: the last one is the most specific.
    const name = Array.isArray(cn) ? cn.at(-1) : cn;
    return usableIdentity(typeof name === 'string' && name !== '' ? name : firstSan(cert.subjectaltname));
  }
}

/**
 * Whether the client's certificate chains to ca-cert.pem. OpenSSL accepts every chain during the
 * handshake and keeps the verdict; a tls.Server reads it into `authorized` and refuses, but a
 * TLSSocket made by hand (the STARTTLS upgrade) never does either, so ask its handle as Node's
 * tls.Server does (onServerSocketSecure in lib/_tls_wrap.js).
 */
function peerVerified(socket: tls.TLSSocket): boolean {
  const handle = (socket as unknown as { _handle?: { verifyError?: () => Error | null } | null })._handle;
  return typeof handle?.verifyError === 'function' && handle.verifyError() === null;
}

/**
 * The first `DNS:` or `email:` entry of Node's subjectaltname text. Node JSON-quotes a value that
 * holds a comma or a quote; such a value names no identity here (it could not be an overlay name).
 */
function firstSan(sans: string | undefined): string | undefined {
  for (const entry of (sans ?? '').split(', ')) {
    const value = /^(?:DNS|email):([^"].*)$/.exec(entry)?.[1];
    if (value !== undefined) return value;
  }
  return undefined;
}

function usableIdentity(name: string | undefined): string | undefined {
  if (name === undefined || name === '' || Buffer.byteLength(name) > MAX_IDENTITY_BYTES) return undefined;
  return /\p{Cc}/u.test(name) ? undefined : name;
}

/** nbdkit's layout: server-cert.pem and server-key.pem; ca-cert.pem for verify-peer. */
async function loadCertificates(dir: string, verifyPeer: boolean): Promise<tls.SecureContext> {
  const info = await stat(dir).catch((err: unknown) => {
    throw unreadable('TLS certificates directory', dir, err);
  });
  if (!info.isDirectory()) throw new Error(`TLS certificates directory ${dir} is not a directory`);
  const certPath = join(dir, 'server-cert.pem');
  const keyPath = join(dir, 'server-key.pem');
  // One file after the other: the first problem in this order is the one reported.
  const cert = await readCertificates(certPath);
  const key = await readPrivateKey(keyPath);
  const ca = verifyPeer ? await readCertificates(join(dir, 'ca-cert.pem')) : null;
  const leaf = cert.certs[0];
  if (leaf === undefined || !leaf.checkPrivateKey(key.key)) {
    throw new Error(`TLS key file ${keyPath} does not match the certificate in ${certPath}`);
  }
  try {
    return tls.createSecureContext({
      minVersion: MIN_VERSION,
      cert: cert.pem,
      key: key.pem,
      ...(ca !== null ? { ca: ca.pem } : {}),
    });
  } catch (err) {
    throw new Error(`TLS certificates in ${dir} cannot be used: ${(err as Error).message}`);
  }
}
