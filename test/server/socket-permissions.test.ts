// Socket permissions: the mode check, the owner-only bind (umask 0177 for the one synchronous
// bind, restored after), and chmod/chown of the socket file with readable errors.

import { statSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { applySocketPermissions, bindOwnerOnly, validateSocketMode } from '../../lib/server/socket-permissions.js';
import { shortDir } from '../helpers/server-fixture.js';

function closeAtTeardown(t: Test, server: Server): void {
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
}

t.test('a socket mode is an integer from 0 to 0777', async (t) => {
  for (const good of [0, 0o600, 0o660, 0o777]) t.doesNotThrow(() => validateSocketMode(good), good.toString(8));
  for (const bad of [-1, 0o1000, 0o4755, 1.5, Number.NaN]) {
    t.throws(() => validateSocketMode(bad), /socket mode .* is not a permission mode from 0 to 0777/, String(bad));
  }
});

t.test('bindOwnerOnly: the socket file is owner-only from the bind on; the umask is restored', async (t) => {
  const path = join(shortDir(t), 'nbd.sock');
  const server = createServer();
  closeAtTeardown(t, server);
  const previous = process.umask(0o027);
  let umaskMode: number;
  let modeAtBind: number;
  try {
    umaskMode = bindOwnerOnly(() => server.listen({ path }));
    // Still synchronous: no callback has run, so this is the mode a client could have met.
    modeAtBind = statSync(path).mode & 0o777;
  } finally {
    t.equal(process.umask(previous), 0o027, 'umask restored after the bind');
  }
  t.equal(modeAtBind.toString(8), '600', 'owner-only at once');
  t.equal(umaskMode.toString(8), '750', 'the mode the umask would have given');
});

t.test('bindOwnerOnly restores the umask when the bind throws', async (t) => {
  const previous = process.umask(0o022);
  try {
    t.throws(
      () =>
        bindOwnerOnly(() => {
          throw new Error('bind failed');
        }),
      /bind failed/,
    );
  } finally {
    t.equal(process.umask(previous), 0o022);
  }
});

t.test('applySocketPermissions sets the group, then the mode', async (t) => {
  const path = join(shortDir(t), 'nbd.sock');
  const server = createServer();
  closeAtTeardown(t, server);
  await new Promise<void>((resolve) => server.listen({ path }, resolve));
  // Root may give any group; anyone may give a group of their own.
  const gid = process.getuid?.() === 0 ? 65534 : (process.getgid?.() ?? 0);
  applySocketPermissions(path, 0o660, gid);
  const stats = statSync(path);
  t.equal((stats.mode & 0o777).toString(8), '660');
  t.equal(stats.gid, gid);
  applySocketPermissions(path, 0o604, undefined);
  t.equal((statSync(path).mode & 0o777).toString(8), '604', 'mode alone');
  t.equal(statSync(path).gid, gid, 'group unchanged');
});

t.test('applySocketPermissions on a missing file: one line naming the path', async (t) => {
  const path = join(shortDir(t), 'gone.sock');
  t.throws(() => applySocketPermissions(path, 0o660, undefined), {
    message: `cannot set the mode of socket ${path} to 0660: ENOENT`,
    code: 'ENOENT',
  });
  t.throws(() => applySocketPermissions(path, 0o660, 0), { message: `cannot give socket ${path} to group 0: ENOENT` });
});

t.test(
  'without root, a group the server is not in is refused with a hint',
  { skip: process.getuid?.() === 0 && 'runs as root' },
  async (t) => {
    const path = join(shortDir(t), 'nbd.sock');
    const server = createServer();
    closeAtTeardown(t, server);
    await new Promise<void>((resolve) => server.listen({ path }, resolve));
    t.throws(
      () => applySocketPermissions(path, 0o660, 0),
      /to group 0: EPERM \(without root, only a group the server is a member of\)/,
    );
  },
);
