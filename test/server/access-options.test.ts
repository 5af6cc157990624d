// resolveAccess: the access options checked and resolved before anything is bound; bad input is
// one readable error, an allow list on a unix socket is a warning.

import t from 'tap';
import { createLogger } from '../../lib/log.js';
import { type AccessOptions, resolveAccess } from '../../lib/server/access-options.js';

const TCP = { kind: 'tcp', host: '127.0.0.1', port: 0 } as const;
const UNIX = { kind: 'unix', path: '/tmp/x.sock' } as const;

function resolveWith(
  options: AccessOptions,
  maxConnections = 1024,
): { lines: string[]; resolved: ReturnType<typeof resolveAccess> } {
  const lines: string[] = [];
  const log = createLogger('debug', (line) => lines.push(line.trimEnd()));
  return { lines, resolved: resolveAccess(options, maxConnections, log) };
}

t.test('defaults: no allow list, the given cap, no socket permissions, no switch', async (t) => {
  const { lines, resolved } = resolveWith({ listen: TCP });
  const access = await resolved;
  t.equal(access.admission.allow, undefined);
  t.equal(access.admission.maxConnections, 1024);
  t.equal(access.socketPermissions, undefined);
  t.equal(access.target, null);
  t.strictSame(lines, []);
});

t.test('an allow list is parsed into an AccessList', async (t) => {
  const access = await resolveWith({ listen: TCP, allow: ['10.0.0.0/8', '::1'] }).resolved;
  t.ok(access.admission.allow?.allows('::ffff:10.2.3.4'));
  t.notOk(access.admission.allow?.allows('127.0.0.1'));
});

t.test('a bad range or cap is refused before anything is bound', async (t) => {
  await t.rejects(resolveWith({ listen: TCP, allow: ['10.0.0.0/40'] }).resolved, /bad address range "10.0.0.0\/40"/);
  await t.rejects(resolveWith({ listen: TCP }, 0).resolved, /the connection limit must be a positive integer, not 0/);
});

t.test('an allow list on a unix socket is kept, with a warning that it checks nobody', async (t) => {
  const { lines, resolved } = resolveWith({ listen: UNIX, allow: ['127.0.0.1'] });
  t.ok((await resolved).admission.allow);
  t.strictSame(lines, ['nbd-cow: warn: the allow list applies to TCP clients only: clients of a unix socket are not checked']);
});

t.test('socket mode and group: unix sockets only, mode checked, group resolved', async (t) => {
  await t.rejects(resolveWith({ listen: TCP, socketMode: 0o660 }).resolved, {
    message: 'a socket mode or group applies to a unix socket only, not to TCP',
  });
  await t.rejects(resolveWith({ listen: TCP, socketGroup: 'root' }).resolved, /unix socket only/);
  await t.rejects(resolveWith({ listen: UNIX, socketMode: 0o1777 }).resolved, /is not a permission mode from 0 to 0777/);
  await t.rejects(resolveWith({ listen: UNIX, socketGroup: 'no-such-group-nbdcow' }).resolved, /unknown group/);
  t.strictSame((await resolveWith({ listen: UNIX, socketMode: 0o660 }).resolved).socketPermissions, {
    mode: 0o660,
    gid: undefined,
  });
  t.strictSame((await resolveWith({ listen: UNIX, socketGroup: 'root' }).resolved).socketPermissions, {
    mode: undefined,
    gid: 0,
  });
});

t.test('user and group resolve to a target', { skip: process.geteuid?.() !== 0 && 'needs root' }, async (t) => {
  const access = await resolveWith({ listen: TCP, user: 'nobody', group: 'nogroup' }).resolved;
  t.strictSame(access.target, { uid: 65534, gid: 65534, who: 'user nobody, group nogroup' });
});
