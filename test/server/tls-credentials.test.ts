// TLS credentials: loading certificate directories and PSK files (each problem one line naming the
// file, never a key), the mode/credential combinations, and real handshakes between a Node TLS
// client and a server-side TLSSocket built from socketOptions(), as the STARTTLS upgrade builds it.

import { spawnSync } from 'node:child_process';
import { chmod, copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import net, { type AddressInfo } from 'node:net';
import { join } from 'node:path';
import tls, { TLSSocket } from 'node:tls';
import { inspect } from 'node:util';
import t, { type Test } from 'tap';
import { loadTlsCredentials, loadTlsSettings, type TlsCredentials } from '../../lib/server/tls-credentials.js';
import { requireAll } from '../helpers/ci.js';
import { type ClientCertificates, clientCertificate, type TlsFixtures, tlsFixtures } from '../helpers/tls-fixtures.js';

const hasOpenssl = spawnSync('openssl', ['version']).status === 0;

interface Outcome {
  /** The server-side socket reached 'secure'. */
  readonly secure: boolean;
  readonly identity: string | undefined;
  readonly protocol: string | null;
  readonly cipher: string | undefined;
  readonly error: string | undefined;
}

/**
 * One handshake: a net.Server on 127.0.0.1:0 wraps its one connection in a TLSSocket made from
 * `credentials.socketOptions()` (as tls-upgrade.ts does after NBD_OPT_STARTTLS); a Node TLS client
 * with `client` options connects. Resolves once the client's socket has closed.
 */
async function handshake(credentials: TlsCredentials, client: tls.ConnectionOptions): Promise<Outcome> {
  const server = net.createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  const serverSide = new Promise<Outcome>((resolve) => {
    server.once('connection', (plain) => {
      const secure = new TLSSocket(plain, credentials.socketOptions());
      secure.on('error', (err) =>
        resolve({ secure: false, identity: undefined, protocol: null, cipher: undefined, error: err.message }),
      );
      // A close without an error (the client gave up first) is a failed handshake too.
      secure.once('close', () =>
        resolve({ secure: false, identity: undefined, protocol: null, cipher: undefined, error: 'closed' }),
      );
      secure.once('secure', () => {
        const identity = credentials.identityOf(secure);
        resolve({ secure: true, identity, protocol: secure.getProtocol(), cipher: secure.getCipher().name, error: undefined });
        secure.end();
      });
    });
  });
  const clientClosed = new Promise<void>((resolve) => {
    const socket = tls.connect({ host: '127.0.0.1', port, ...client });
    socket.on('error', () => undefined); // the server side's outcome is what the tests assert
    socket.on('data', () => undefined);
    socket.once('close', () => resolve());
  });
  const [outcome] = await Promise.all([serverSide, clientClosed]);
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return outcome;
}

/** Client options presenting `cert` (or none) and trusting the fixtures' CA for the server. */
async function x509Client(fixtures: TlsFixtures, cert?: ClientCertificates): Promise<tls.ConnectionOptions> {
  return {
    servername: 'localhost',
    ca: await readFile(fixtures.caCert),
    ...(cert !== undefined ? { cert: await readFile(cert.cert), key: await readFile(cert.key) } : {}),
  };
}

function pskClient(username: string, hexKey: string, extra: tls.ConnectionOptions = {}): tls.ConnectionOptions {
  return {
    ciphers: 'TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:ECDHE-PSK-CHACHA20-POLY1305',
    pskCallback: () => ({ identity: username, psk: Buffer.from(hexKey, 'hex') }),
    checkServerIdentity: () => undefined,
    ...extra,
  };
}

/** The message loadTlsCredentials rejects with (and that it is one line). */
async function loadError(t: Test, options: Parameters<typeof loadTlsCredentials>[0]): Promise<string> {
  try {
    await loadTlsCredentials(options);
  } catch (err) {
    const message = (err as Error).message;
    t.notMatch(message, /\n/, 'one line');
    return message;
  }
  t.fail('loaded without an error');
  return '';
}

if (requireAll(t, hasOpenssl ? [] : ['openssl'], 'apt-get install openssl')) {
  const fixtures = await tlsFixtures();
  const scratch = await mkdtemp(join(fixtures.root, 'scratch-'));
  /** A copy of the server directory with `changes` (file name → content) written over it. */
  const serverDirWith = async (name: string, changes: Record<string, string>): Promise<string> => {
    const dir = join(scratch, name);
    await mkdir(dir);
    for (const file of ['ca-cert.pem', 'server-cert.pem', 'server-key.pem']) {
      await copyFile(join(fixtures.serverDir, file), join(dir, file));
    }
    for (const [file, content] of Object.entries(changes)) await writeFile(join(dir, file), content);
    return dir;
  };
  let pskFiles = 0;
  const pskFileWith = async (content: string): Promise<string> => {
    const path = join(scratch, `keys-${++pskFiles}.psk`);
    await writeFile(path, content);
    return path;
  };

  t.test('a certificates directory in nbdkit layout loads; socketOptions reuse one secure context', async (t) => {
    const credentials = await loadTlsCredentials({ certificates: fixtures.serverDir });
    t.equal(credentials.kind, 'x509');
    const a = credentials.socketOptions();
    const b = credentials.socketOptions();
    t.not(a, b, 'a fresh options object per connection');
    t.ok(a.secureContext, 'a secure context');
    t.equal(a.secureContext, b.secureContext, 'built once, shared by every connection');
    t.equal(a.isServer, true);
    t.equal(a.requestCert, false, 'no client certificate asked for without verify-peer');
    const verifying = (await loadTlsCredentials({ certificates: fixtures.serverDir, verifyPeer: true })).socketOptions();
    t.equal(verifying.requestCert, true);
    t.equal(verifying.rejectUnauthorized, true);
  });

  t.test('bad combinations of options are refused before any file is read', async (t) => {
    t.match(await loadError(t, {}), /TLS needs credentials: --tls-certificates DIR or --tls-psk FILE/);
    t.match(
      await loadError(t, { certificates: fixtures.serverDir, pskFile: fixtures.pskFile }),
      /certificates \(--tls-certificates\) or a PSK file \(--tls-psk\), not both/,
    );
    t.match(await loadError(t, { pskFile: fixtures.pskFile, verifyPeer: true }), /--tls-verify-peer needs --tls-certificates/);
  });

  t.test('certificate directory problems name the file and the problem', async (t) => {
    const serverDir = fixtures.serverDir;
    const garbage = '-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n';
    const aliceKey = await readFile(fixtures.alice.key, 'utf8');
    const encrypted = spawnSync('openssl', ['pkey', '-in', join(serverDir, 'server-key.pem'), '-aes256', '-passout', 'pass:x']);
    const cases: [string, Promise<string>, RegExp][] = [
      ['missing directory', Promise.resolve(join(scratch, 'nowhere')), /^TLS certificates directory \S+nowhere does not exist$/],
      [
        'a file, not a directory',
        Promise.resolve(fixtures.pskFile),
        /^TLS certificates directory \S+server\.psk is not a directory$/,
      ],
      [
        'missing server-cert.pem',
        Promise.resolve(fixtures.alice.dir),
        /^TLS certificate file \S+server-cert\.pem does not exist$/,
      ],
      [
        'missing server-key.pem',
        serverDirWith('no-key', {}).then(async (dir) => {
          await rm(join(dir, 'server-key.pem'));
          return dir;
        }),
        /^TLS key file \S+no-key\/server-key\.pem does not exist$/,
      ],
      [
        'server-cert.pem not PEM',
        serverDirWith('text-cert', { 'server-cert.pem': 'hello\n' }),
        /server-cert\.pem holds no PEM certificate$/,
      ],
      ['server-cert.pem a key', serverDirWith('key-as-cert', { 'server-cert.pem': aliceKey }), /holds no PEM certificate$/],
      [
        'corrupt PEM certificate',
        serverDirWith('bad-cert', { 'server-cert.pem': garbage }),
        /server-cert\.pem: certificate 1 is not valid/,
      ],
      [
        'server-key.pem not a key',
        serverDirWith('bad-key', { 'server-key.pem': 'hello\n' }),
        /server-key\.pem holds no usable PEM private key/,
      ],
      [
        'encrypted key',
        serverDirWith('encrypted-key', { 'server-key.pem': encrypted.stdout.toString() }),
        /server-key\.pem is encrypted; nbd-cow needs it without a passphrase$/,
      ],
      [
        'key of another certificate',
        serverDirWith('mismatch', { 'server-key.pem': aliceKey }),
        /^TLS key file \S+mismatch\/server-key\.pem does not match the certificate in \S+mismatch\/server-cert\.pem$/,
      ],
    ];
    for (const [name, dir, expected] of cases) t.match(await loadError(t, { certificates: await dir }), expected, name);
  });

  t.test('a directory where a file should be is unreadable, said so', async (t) => {
    const dir = join(scratch, 'cert-is-dir');
    await mkdir(join(dir, 'server-cert.pem'), { recursive: true });
    t.match(await loadError(t, { certificates: dir }), /server-cert\.pem is a directory, not a file$/);
  });

  t.test(
    'an unreadable file: permission denied',
    { skip: process.getuid?.() === 0 ? 'root reads every file' : false },
    async (t) => {
      const dir = await serverDirWith('unreadable', {});
      await chmod(join(dir, 'server-key.pem'), 0);
      t.match(await loadError(t, { certificates: dir }), /server-key\.pem cannot be read \(permission denied\)$/);
    },
  );

  t.test('verify-peer needs ca-cert.pem; without verify-peer it is not read', async (t) => {
    const dir = join(scratch, 'no-ca');
    await mkdir(dir);
    await copyFile(join(fixtures.serverDir, 'server-cert.pem'), join(dir, 'server-cert.pem'));
    await copyFile(join(fixtures.serverDir, 'server-key.pem'), join(dir, 'server-key.pem'));
    t.equal((await loadTlsCredentials({ certificates: dir })).kind, 'x509');
    t.match(await loadError(t, { certificates: dir, verifyPeer: true }), /ca-cert\.pem does not exist$/);
  });

  t.test('a PSK file loads: blank lines, # comments and CRLF are accepted', async (t) => {
    const key = 'ab'.repeat(32);
    const file = await pskFileWith(`# users\r\n\r\nalice:${key}\r\nbob:${'CD'.repeat(16)}\n`);
    const credentials = await loadTlsCredentials({ pskFile: file });
    t.equal(credentials.kind, 'psk');
    t.equal(credentials.socketOptions().isServer, true);
    t.notMatch(inspect(credentials, { depth: 5, showHidden: true }), key, 'inspect shows no key');
    t.notMatch(JSON.stringify(credentials), key, 'JSON shows no key');
  });

  t.test('PSK file problems name the line, never the key', async (t) => {
    const secret = 'f00dfeed'.repeat(8);
    const good = `alice:${secret}\n`;
    const cases: [string, string, RegExp][] = [
      ['no colon', `${good}${secret}\n`, /line 2: expected username:hexkey$/],
      ['empty user', `:${secret}\n`, /line 1: the username is empty or holds spaces or control characters$/],
      ['user with a space', `al ice:${secret}\n`, /line 1: the username is empty or holds spaces/],
      ['user longer than 128 bytes', `${'u'.repeat(129)}:${secret}\n`, /line 1: the username is longer than 128 bytes$/],
      ['duplicate user', `${good}bob:${secret}\nalice:${secret}\n`, /line 3: user alice is already on line 1$/],
      ['odd number of digits', `alice:${secret}a\n`, /line 1: the key is not an even number of hex digits$/],
      ['not hex', `alice:${secret.slice(2)}zz\n`, /line 1: the key is not an even number of hex digits$/],
      ['too short', `alice:${secret.slice(0, 30)}\n`, /line 1: the key is 15 bytes; it must be 16 to 256 \(psktool makes 32\)$/],
      ['too long', `alice:${'ab'.repeat(257)}\n`, /line 1: the key is 257 bytes/],
      ['no users', '# nobody yet\n\n', /holds no username:hexkey line$/],
    ];
    for (const [name, content, expected] of cases) {
      const file = await pskFileWith(content);
      const message = await loadError(t, { pskFile: file });
      t.match(message, expected, name);
      t.match(message, `TLS PSK file ${file}`, `${name}: names the file`);
      t.notMatch(message, secret.slice(0, 16), `${name}: no key material`);
    }
    t.match(await loadError(t, { pskFile: join(scratch, 'none.psk') }), /^TLS PSK file \S+none\.psk does not exist$/);
  });

  t.test('mode and credentials: what is an error, what loads', async (t) => {
    t.same(await loadTlsSettings(undefined), { mode: 'off', credentials: null }, 'no tls option: off');
    t.same(await loadTlsSettings({ mode: 'off' }), { mode: 'off', credentials: null });
    await t.rejects(
      loadTlsSettings({ mode: 'off', pskFile: fixtures.pskFile }),
      /given but TLS is off: add --tls on or --tls require/,
    );
    await t.rejects(loadTlsSettings({ mode: 'off', verifyPeer: true }), /given but TLS is off/);
    await t.rejects(loadTlsSettings({ mode: 'on' }), /^--tls on needs credentials: --tls-certificates DIR or --tls-psk FILE$/);
    await t.rejects(loadTlsSettings({ mode: 'require', verifyPeer: true }), /^--tls require needs credentials/);
    await t.rejects(
      loadTlsSettings({ mode: 'sometimes' as 'on', pskFile: fixtures.pskFile }),
      /TLS mode "sometimes" is not one of off, on, require/,
    );
    const settings = await loadTlsSettings({ mode: 'require', pskFile: fixtures.pskFile });
    t.equal(settings.mode, 'require');
    t.equal(settings.credentials?.kind, 'psk');
    await t.rejects(loadTlsSettings({ mode: 'on', pskFile: join(scratch, 'absent.psk') }), /absent\.psk does not exist/);
  });

  t.test('PSK handshakes: the identity is the username; a wrong key or user is refused', async (t) => {
    const credentials = await loadTlsCredentials({ pskFile: fixtures.pskFile });
    const { pskAlice, pskBob } = fixtures;
    const alice = await handshake(credentials, pskClient('alice', pskAlice.hexKey));
    t.match(alice, { secure: true, identity: 'alice', protocol: 'TLSv1.3' }, 'alice over TLS 1.3');
    const bob = await handshake(credentials, pskClient('bob', pskBob.hexKey, { maxVersion: 'TLSv1.2' }));
    t.match(
      bob,
      { secure: true, identity: 'bob', protocol: 'TLSv1.2', cipher: 'ECDHE-PSK-CHACHA20-POLY1305' },
      'bob over TLS 1.2',
    );
    t.match(
      await handshake(credentials, pskClient('alice', pskBob.hexKey)),
      { secure: false, identity: undefined },
      "bob's key for alice",
    );
    t.match(await handshake(credentials, pskClient('carol', pskAlice.hexKey)), { secure: false }, 'unknown user');
    const old = pskClient('alice', pskAlice.hexKey, { maxVersion: 'TLSv1.2', ciphers: 'PSK-AES128-GCM-SHA256' });
    t.match(await handshake(credentials, old), { secure: false }, 'plain PSK (no forward secrecy) is not offered');
  });

  t.test('X.509 without verify-peer: the server certificate verifies for localhost and 127.0.0.1; no identity', async (t) => {
    const credentials = await loadTlsCredentials({ certificates: fixtures.serverDir });
    const byName = await handshake(credentials, await x509Client(fixtures, fixtures.alice));
    t.match(byName, { secure: true, identity: undefined, protocol: 'TLSv1.3' }, 'a certificate not asked for proves nothing');
    const { servername: _, ...byAddress } = await x509Client(fixtures);
    t.match(await handshake(credentials, { ...byAddress, rejectUnauthorized: true }), { secure: true }, 'IP SAN 127.0.0.1');
    const tls12 = await handshake(credentials, { ...(await x509Client(fixtures)), maxVersion: 'TLSv1.2' });
    t.match(tls12, { secure: true, protocol: 'TLSv1.2' }, 'TLS 1.2 (what nbd-client 3.24 speaks)');
    const tls11 = await handshake(credentials, {
      ...(await x509Client(fixtures)),
      minVersion: 'TLSv1.1',
      maxVersion: 'TLSv1.1',
      ciphers: 'DEFAULT@SECLEVEL=0',
    });
    t.match(tls11, { secure: false, error: /unsupported protocol/ }, 'TLS 1.1 is refused');
  });

  t.test('X.509 with verify-peer: the CA-signed certificate names the client', async (t) => {
    const credentials = await loadTlsCredentials({ certificates: fixtures.serverDir, verifyPeer: true });
    t.match(await handshake(credentials, await x509Client(fixtures, fixtures.alice)), { secure: true, identity: 'alice' });
    const bob = await handshake(credentials, { ...(await x509Client(fixtures, fixtures.bob)), maxVersion: 'TLSv1.2' });
    t.match(bob, { secure: true, identity: 'bob', protocol: 'TLSv1.2' });
    const none = await handshake(credentials, await x509Client(fixtures));
    t.match(none, { secure: false, error: /peer did not return a certificate/ }, 'no certificate: the handshake is refused');
  });

  t.test('X.509 with verify-peer: a certificate from another CA proves no identity', async (t) => {
    const credentials = await loadTlsCredentials({ certificates: fixtures.serverDir, verifyPeer: true });
    const stranger = await handshake(credentials, await x509Client(fixtures, fixtures.stranger));
    // OpenSSL accepts every chain in the handshake and Node refuses only in tls.Server: on a
    // TLSSocket made by hand the handshake completes, and the missing identity is the verdict.
    t.match(stranger, { secure: true, identity: undefined }, 'handshake completes, identity undefined');
  });

  t.test('identity from the certificate: CN, else the first DNS or email SAN; bounded', async (t) => {
    const credentials = await loadTlsCredentials({ certificates: fixtures.serverDir, verifyPeer: true });
    const cases: [string, string, string[], string | undefined][] = [
      ['dns-only', '/O=nbd-cow tests', ['subjectAltName=DNS:carol.example,DNS:other.example'], 'carol.example'],
      ['email-only', '/O=nbd-cow tests', ['subjectAltName=IP:10.0.0.1,email:dave@example.com'], 'dave@example.com'],
      ['two-cns', '/CN=generic/CN=erin', [], 'erin'],
      ['nameless', '/O=nbd-cow tests', [], undefined],
      ['long-san', '/O=nbd-cow tests', [`subjectAltName=DNS:${'x'.repeat(129)}`], undefined],
    ];
    for (const [label, subject, extensions, expected] of cases) {
      const cert = await clientCertificate(label, subject, extensions);
      t.match(await handshake(credentials, await x509Client(fixtures, cert)), { secure: true, identity: expected }, label);
    }
  });

  t.test('identityOf a socket whose handshake never ran, or that is gone, is undefined', async (t) => {
    const x509 = await loadTlsCredentials({ certificates: fixtures.serverDir, verifyPeer: true });
    const psk = await loadTlsCredentials({ pskFile: fixtures.pskFile });
    const fresh = new TLSSocket(new net.Socket(), x509.socketOptions());
    t.equal(x509.identityOf(fresh), undefined);
    t.equal(psk.identityOf(fresh), undefined);
    fresh.destroy();
    t.equal(x509.identityOf(fresh), undefined, 'destroyed');
  });
}
