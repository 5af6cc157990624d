// Resolving an inherited socket: getsockname's answer for TCP, /proc/net/unix by inode for a unix
// socket (a file path only; abstract, unnamed or relative ones stay unresolved).

import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { findUnixPath, resolveInherited, unixSocketPath } from '../../lib/server/inherited-socket.js';
import { shortDir } from '../helpers/server-fixture.js';

const TABLE = [
  'Num       RefCount Protocol Flags    Type St Inode Path',
  '00000000826d089c: 00000003 00000000 00000000 0001 03  1674',
  '000000001d4a10a9: 00000002 00000000 00010000 0001 01 5121591 /run/nbd-cow/nbd.sock',
  '000000001d4a10aa: 00000002 00000000 00010000 0001 01 5121592 /tmp/my dir/nbd.sock',
  '000000001d4a10ab: 00000002 00000000 00010000 0001 01 5121597 @nbd-cow',
  '000000001d4a10ac: 00000002 00000000 00010000 0001 01 5121598 relative.sock',
  '',
].join('\n');

function listen(t: Test, server: Server, path: string): Promise<void> {
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return new Promise((resolve) => server.listen({ path }, resolve));
}

t.test('/proc/net/unix: the path of an inode, when it is a file path', async (t) => {
  t.equal(findUnixPath(TABLE, 5121591), '/run/nbd-cow/nbd.sock');
  t.equal(findUnixPath(TABLE, 5121592), '/tmp/my dir/nbd.sock', 'a path with a space');
  t.equal(findUnixPath(TABLE, 1674), null, 'unnamed');
  t.equal(findUnixPath(TABLE, 5121597), null, 'abstract');
  t.equal(findUnixPath(TABLE, 5121598), null, 'relative to a directory we do not know');
  t.equal(findUnixPath(TABLE, 12), null, 'absent');
  t.equal(findUnixPath(TABLE, 51215910), null, 'no prefix match');
  t.equal(findUnixPath('', 1674), null);
});

t.test('TCP and a unix path from server.address() are taken as they are', async (t) => {
  const inherited = { kind: 'inherited', fd: 3 } as const;
  t.strictSame(resolveInherited(inherited, { address: '::', family: 'IPv6', port: 10809 }), {
    kind: 'tcp',
    host: '::',
    port: 10809,
  });
  t.strictSame(resolveInherited(inherited, '/run/nbd.sock'), { kind: 'unix', path: '/run/nbd.sock' });
});

t.test('a unix socket bound here is found by its fd; a bad fd or table is unknown', async (t) => {
  const path = join(shortDir(t), 'nbd.sock');
  const server = createServer();
  await listen(t, server, path);
  // The handle's fd is not public API; Linux exposes it, which is all this needs.
  const fd = (server as unknown as { _handle: { fd: number } })._handle.fd;
  t.equal(unixSocketPath(fd), path);
  t.strictSame(resolveInherited({ kind: 'inherited', fd, name: 'x' }, null), { kind: 'unix', path });
  t.equal(unixSocketPath(fd, join(shortDir(t), 'no-such-table')), null);
  t.equal(unixSocketPath(100_000), null);
  t.strictSame(resolveInherited({ kind: 'inherited', fd: 100_000, name: 'x' }, null), {
    kind: 'inherited',
    fd: 100_000,
    name: 'x',
  });
});
