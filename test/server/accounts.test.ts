// Users and groups through getent: names and numeric ids, ids without an entry, unknown names,
// and names that are refused before getent ever sees them.

import t from 'tap';
import { lookupGroup, lookupUser } from '../../lib/server/accounts.js';
import { requireAll } from '../helpers/ci.js';
import { missing } from '../helpers/clients.js';

/** A uid/gid no test machine hands out (just under (uid_t)-1). */
const UNUSED_ID = 4_294_967_000;

if (requireAll(t, missing('getent'), 'getent comes with the C library (libc-bin)')) {
  t.test('root by name, by number and by numeric string', async (t) => {
    for (const key of ['root', 0, '0']) t.strictSame(await lookupUser(key), { name: 'root', uid: 0, gid: 0 }, String(key));
    for (const key of ['root', 0, '0']) t.strictSame(await lookupGroup(key), { name: 'root', gid: 0 }, String(key));
  });

  t.test('an id without an entry is taken as it is (a user then has no primary group)', async (t) => {
    t.strictSame(await lookupUser(UNUSED_ID), { name: String(UNUSED_ID), uid: UNUSED_ID, gid: undefined });
    t.strictSame(await lookupGroup(String(UNUSED_ID)), { name: String(UNUSED_ID), gid: UNUSED_ID });
  });

  t.test('an unknown name is one readable error', async (t) => {
    await t.rejects(lookupUser('no-such-user-nbdcow'), { message: 'unknown user "no-such-user-nbdcow"' });
    await t.rejects(lookupGroup('no-such-group-nbdcow'), { message: 'unknown group "no-such-group-nbdcow"' });
  });

  t.test('names that are not account names, and ids out of range, are refused', async (t) => {
    for (const bad of ['', '-n', '--help', 'a b', 'a:b', '../etc', 'x\n', 'é', 'a'.repeat(300)]) {
      await t.rejects(lookupUser(bad), /^bad user name .*: expected a name or a numeric id$/, JSON.stringify(bad));
      await t.rejects(lookupGroup(bad), /^bad group name /, JSON.stringify(bad));
    }
    for (const bad of [-1, 1.5, 4_294_967_295, Number.NaN]) await t.rejects(lookupUser(bad), /^bad user id /, String(bad));
    await t.rejects(lookupGroup('4294967295'), /^bad group id 4294967295$/);
  });
}
