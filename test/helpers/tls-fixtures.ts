// TLS credentials for tests, made with the openssl CLI in a temp dir once per test process: a CA,
// a server certificate in nbdkit's layout, client certificates in the per-client layout qemu's
// tls-creds-x509 (endpoint=client) and libnbd's tls-certificates=DIR read, and a PSK file.

import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { rmSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';

const execFileAsync = promisify(execFile);

/** A client's directory: ca-cert.pem (trusts the server), client-cert.pem, client-key.pem. */
export interface ClientCertificates {
  readonly dir: string;
  readonly cert: string;
  readonly key: string;
  /** The CA file in `dir` (what `nbd-client -cacertfile` and `gnutls-cli --x509cafile` take). */
  readonly ca: string;
}

/** A PSK user: one `user:hexkey` line in `dir/keys.psk` (libnbd's tls-psk-file, qemu's tls-creds-psk dir). */
export interface PskClient {
  readonly username: string;
  readonly hexKey: string;
  readonly dir: string;
  readonly file: string;
}

export interface TlsFixtures {
  /** The temp dir holding everything below. */
  readonly root: string;
  /** nbdkit's layout: ca-cert.pem, server-cert.pem, server-key.pem (CN localhost, SAN localhost, 127.0.0.1, ::1). */
  readonly serverDir: string;
  readonly caCert: string;
  /** The CA's key, for clientCertificate(). */
  readonly caKey: string;
  /** CN=alice and CN=bob, signed by the CA. */
  readonly alice: ClientCertificates;
  readonly bob: ClientCertificates;
  /** CN=mallory, signed by another CA: proves no identity under --tls-verify-peer. Its ca-cert.pem holds both CAs. */
  readonly stranger: ClientCertificates;
  /** The server's PSK file: alice and bob with random 32-byte keys. */
  readonly pskFile: string;
  readonly pskAlice: PskClient;
  readonly pskBob: PskClient;
}

// EC P-256 keys: generated in milliseconds, where RSA-2048 takes a good part of a second each.
const KEY_ARGS = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes'];

async function openssl(args: readonly string[]): Promise<void> {
  await execFileAsync('openssl', args, { timeout: 30_000 });
}

async function makeCa(dir: string, name: string): Promise<{ cert: string; key: string }> {
  const cert = join(dir, `${name}-cert.pem`);
  const key = join(dir, `${name}-key.pem`);
  // biome-ignore format: flags and their values side by side
  await openssl([
    'req', '-x509', ...KEY_ARGS, '-keyout', key, '-out', cert, '-days', '3650', '-subj', `/CN=nbd-cow test ${name}`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  return { cert, key };
}

/** A leaf certificate for `subject` signed by `ca` (OpenSSL 3's `req -x509 -CA`: one command). */
async function makeLeaf(
  ca: { cert: string; key: string },
  subject: string,
  cert: string,
  key: string,
  extensions: readonly string[],
): Promise<void> {
  const ext = extensions.flatMap((e) => ['-addext', e]);
  // biome-ignore format: flags and their values side by side
  await openssl([
    'req', '-x509', ...KEY_ARGS, '-keyout', key, '-out', cert, '-days', '3650', '-subj', subject,
    '-CA', ca.cert, '-CAkey', ca.key,
    '-addext', 'basicConstraints=critical,CA:FALSE', '-addext', 'keyUsage=critical,digitalSignature,keyEncipherment',
    ...ext,
  ]);
}

async function makeClient(
  root: string,
  ca: { cert: string; key: string },
  label: string,
  trustedCa: readonly string[],
  subject = `/CN=${label}`,
  extensions: readonly string[] = [],
): Promise<ClientCertificates> {
  const dir = join(root, `client-${label}`);
  await mkdir(dir);
  const files = { dir, cert: join(dir, 'client-cert.pem'), key: join(dir, 'client-key.pem'), ca: join(dir, 'ca-cert.pem') };
  await makeLeaf(ca, subject, files.cert, files.key, ['extendedKeyUsage=clientAuth', ...extensions]);
  const pems = await Promise.all(trustedCa.map((path) => readFile(path, 'utf8')));
  await writeFile(files.ca, pems.join(''));
  return files;
}

async function makePskClient(root: string, username: string): Promise<PskClient> {
  const dir = join(root, `psk-${username}`);
  await mkdir(dir);
  const hexKey = randomBytes(32).toString('hex');
  const file = join(dir, 'keys.psk'); // the name qemu's tls-creds-psk looks for in its dir
  await writeFile(file, `${username}:${hexKey}\n`, { mode: 0o600 });
  return { username, hexKey, dir, file };
}

async function makeFixtures(): Promise<TlsFixtures> {
  const root = await mkdtemp(join(tmpdir(), 'nbd-cow-tls-'));
  process.once('exit', () => rmSync(root, { recursive: true, force: true }));
  const [ca, otherCa] = await Promise.all([makeCa(root, 'ca'), makeCa(root, 'other-ca')]);
  const serverDir = join(root, 'server');
  await mkdir(serverDir);
  const caCert = join(serverDir, 'ca-cert.pem');
  const [, alice, bob, stranger, pskAlice, pskBob] = await Promise.all([
    makeLeaf(ca, '/CN=localhost', join(serverDir, 'server-cert.pem'), join(serverDir, 'server-key.pem'), [
      'subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1',
      'extendedKeyUsage=serverAuth',
    ]),
    makeClient(root, ca, 'alice', [ca.cert]),
    makeClient(root, ca, 'bob', [ca.cert]),
    // Both CAs: the client still trusts the server, and qemu, which checks its own certificate
    // against its ca-cert.pem when loading, accepts the directory.
    makeClient(root, otherCa, 'mallory', [ca.cert, otherCa.cert]),
    makePskClient(root, 'alice'),
    makePskClient(root, 'bob'),
    copyFile(ca.cert, caCert),
  ]);
  const pskFile = join(root, 'server.psk');
  await writeFile(pskFile, `alice:${pskAlice.hexKey}\nbob:${pskBob.hexKey}\n`, { mode: 0o600 });
  return { root, serverDir, caCert, caKey: ca.key, alice, bob, stranger, pskFile, pskAlice, pskBob };
}

let made: Promise<TlsFixtures> | undefined;

/** The fixtures of this test process, made at the first call (about 0.1 s). Needs `openssl` on PATH. */
export function tlsFixtures(): Promise<TlsFixtures> {
  made ??= makeFixtures();
  return made;
}

/**
 * One more client directory, `client-LABEL` (LABEL unique per process), whose certificate has
 * `subject` (openssl's `/CN=x/O=y` form) and `extensions` (`subjectAltName=DNS:x`), signed by the
 * fixtures' CA: for tests of what identity a certificate proves.
 */
export async function clientCertificate(
  label: string,
  subject: string,
  extensions: readonly string[] = [],
): Promise<ClientCertificates> {
  const fixtures = await tlsFixtures();
  const ca = { cert: fixtures.caCert, key: fixtures.caKey };
  return makeClient(fixtures.root, ca, label, [fixtures.caCert], subject, extensions);
}

/** libnbd's URI for `user` with its key file, to export `name` (default: the URI's) of the server at `uri`. */
export function libnbdPskUri(uri: string, user: PskClient, name?: string): string {
  const url = new URL(uri);
  const path = name === undefined ? url.pathname : `/${encodeURIComponent(name)}`;
  return `nbds://${user.username}@${url.host}${path}?tls-psk-file=${encodeURIComponent(user.file)}`;
}

/** qemu-img / qemu-io arguments for `user`'s PSK to export `name` (default: the URI's) of the TCP server at `uri`. */
export function qemuPskArgs(uri: string, user: PskClient, name?: string): string[] {
  const { port, pathname } = new URL(uri);
  const exportName = name ?? decodeURIComponent(pathname.slice(1));
  return [
    '--object',
    `tls-creds-psk,id=tls0,dir=${user.dir},username=${user.username},endpoint=client`,
    '--image-opts',
    `driver=nbd,host=127.0.0.1,port=${port},export=${exportName},tls-creds=tls0`,
  ];
}
