// Users and groups by name or number, for --user, --group and --socket-group. Node has no
// getpwnam/getgrnam, so this asks `getent`, which goes through NSS as the C library would
// (/etc/passwd, LDAP, systemd's dynamic users) rather than reading /etc/passwd by hand.

import { execFile } from 'node:child_process';

export interface UserAccount {
  readonly name: string;
  readonly uid: number;
  /** The user's primary group; undefined for a numeric uid that has no entry in the database. */
  readonly gid: number | undefined;
}

export interface GroupAccount {
  readonly name: string;
  readonly gid: number;
}

/** Largest valid id: (uid_t)-1 means "no change" to chown and setreuid. */
const MAX_ID = 0xfffffffe;
/** POSIX portable names, plus the `$` that Samba machine accounts end with. */
const NAME = /^[A-Za-z0-9_.][A-Za-z0-9_.-]*\$?$/;
const GETENT_TIMEOUT_MS = 10_000;

/** A user given by name or uid (a string of digits is a uid, as chown reads it). */
export async function lookupUser(user: string | number): Promise<UserAccount> {
  const key = accountKey('user', user);
  const fields = await getent('passwd', key);
  if (fields === null) {
    if (typeof key === 'number') return { name: String(key), uid: key, gid: undefined };
    throw new Error(`unknown user ${JSON.stringify(user)}`);
  }
  // name:password:uid:gid:gecos:home:shell
  return { name: fields[0] ?? String(key), uid: parseId(fields[2], 'passwd', key), gid: parseId(fields[3], 'passwd', key) };
}

/** A group given by name or gid; a gid without an entry in the database is taken as it is. */
export async function lookupGroup(group: string | number): Promise<GroupAccount> {
  const key = accountKey('group', group);
  const fields = await getent('group', key);
  if (fields === null) {
    if (typeof key === 'number') return { name: String(key), gid: key };
    throw new Error(`unknown group ${JSON.stringify(group)}`);
  }
  // name:password:gid:members
  return { name: fields[0] ?? String(key), gid: parseId(fields[2], 'group', key) };
}

/** The id (number) or name (string) to look up, or a one-line error for anything else. */
function accountKey(kind: 'user' | 'group', value: string | number): string | number {
  const id = typeof value === 'number' ? value : /^\d{1,10}$/.test(value) ? Number(value) : null;
  if (id !== null) {
    if (!Number.isSafeInteger(id) || id < 0 || id > MAX_ID) throw new Error(`bad ${kind} id ${value}`);
    return id;
  }
  if (typeof value === 'string' && value.length <= 256 && NAME.test(value)) return value;
  throw new Error(`bad ${kind} name ${JSON.stringify(value)}: expected a name or a numeric id`);
}

function parseId(text: string | undefined, database: string, key: string | number): number {
  const id = Number(text);
  if (text === undefined || !/^\d+$/.test(text) || id > MAX_ID) {
    throw new Error(`getent ${database} ${key}: unexpected entry (id ${JSON.stringify(text)})`);
  }
  return id;
}

/** The fields of the entry for `key` in `database`, or null when there is none (getent exit 2). */
function getent(database: 'passwd' | 'group', key: string | number): Promise<string[] | null> {
  return new Promise((resolve, reject) => {
    execFile('getent', [database, String(key)], { timeout: GETENT_TIMEOUT_MS }, (err, stdout) => {
      if (err === null) {
        resolve((stdout.split('\n')[0] ?? '').split(':'));
        return;
      }
      if (err.code === 2) resolve(null);
      else if (err.code === 'ENOENT') reject(new Error(`cannot look up ${database} entry ${key}: getent is not installed`));
      else reject(new Error(`cannot look up ${database} entry ${key}: getent failed (${err.code ?? err.message})`));
    });
  });
}
