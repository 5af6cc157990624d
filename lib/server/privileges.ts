// Dropping root once start-up is done (the listeners bound, the base opened, the overlay
// directory made and swept): setgroups([]), setgid, setuid, in that order, as nbd-server does;
// then check that every id changed and that root cannot be taken back.

import { accessSync, constants as fsConstants } from 'node:fs';
import { chown } from 'node:fs/promises';
import { dirname } from 'node:path';
import { lookupGroup, lookupUser } from './accounts.js';

/** Who the server becomes. */
export interface PrivilegeTarget {
  /** Absent when only a group was asked for: the uid stays. */
  readonly uid?: number;
  readonly gid: number;
  /** For messages: "user nobody", "group nogroup". */
  readonly who: string;
}

/**
 * Resolve --user/--group to ids, or null when neither is given. Throws one line when the server
 * is not root (only root can switch), a name is unknown, or a uid without a passwd entry comes
 * without a group.
 */
export async function privilegeTarget(user?: string | number, group?: string | number): Promise<PrivilegeTarget | null> {
  if (user === undefined && group === undefined) return null;
  const asked = user !== undefined ? `user ${user}` : `group ${group}`;
  const ids = posixIds();
  if (ids === null) throw new Error(`cannot switch to ${asked}: not supported on this platform`);
  const euid = ids.geteuid();
  if (euid !== 0) throw new Error(`cannot switch to ${asked}: the server is not running as root (uid ${euid})`);
  const account = user !== undefined ? await lookupUser(user) : undefined;
  const groupAccount = group !== undefined ? await lookupGroup(group) : undefined;
  const gid = groupAccount?.gid ?? account?.gid;
  if (gid === undefined) throw new Error(`cannot switch to ${asked}: it has no entry in the user database; give a group too`);
  const who = [account && `user ${account.name}`, groupAccount && `group ${groupAccount.name}`].filter(Boolean).join(', ');
  return account !== undefined ? { uid: account.uid, gid, who } : { gid, who };
}

/**
 * Give `dir` and the directories above it that start-up created (`firstCreated` is what
 * mkdir -p returned: the topmost new one, or undefined when `dir` existed) to the target.
 */
export async function handOverCreatedDirs(dir: string, firstCreated: string | undefined, target: PrivilegeTarget): Promise<void> {
  if (firstCreated === undefined || target.uid === undefined) return;
  const chain: string[] = [];
  for (let at = dir; at.startsWith(firstCreated); at = dirname(at)) {
    chain.push(at);
    if (at === firstCreated || at === dirname(at)) break;
  }
  for (const path of chain) await chown(path, target.uid, target.gid);
}

/**
 * Become the target, synchronously (no client can be accepted half-way). Each of
 * `writableDirs` (the overlay directories) must then be writable and searchable. Throws one line; the
 * caller stops serving. A failure half-way leaves the process with some ids dropped: it must
 * not go on serving either way.
 */
export function dropPrivileges(target: PrivilegeTarget, writableDirs: string | readonly string[] = []): void {
  const ids = posixIds();
  if (ids === null) throw new Error(`cannot switch to ${target.who}: not supported on this platform`);
  try {
    ids.setgroups([]);
    ids.setgid(target.gid);
    if (target.uid !== undefined) ids.setuid(target.uid);
  } catch (err) {
    throw new Error(`cannot switch to ${target.who}: ${(err as Error).message}`);
  }
  const uidOk = target.uid === undefined || (ids.getuid() === target.uid && ids.geteuid() === target.uid);
  if (!uidOk || ids.getgid() !== target.gid || ids.getegid() !== target.gid) {
    throw new Error(`switching to ${target.who} left uid ${ids.getuid()}/${ids.geteuid()}, gid ${ids.getgid()}/${ids.getegid()}`);
  }
  if (target.uid !== undefined && target.uid !== 0 && canRegainRoot(ids)) {
    throw new Error(`after switching to ${target.who} the process could become root again`);
  }
  for (const dir of typeof writableDirs === 'string' ? [writableDirs] : writableDirs) {
    try {
      accessSync(dir, fsConstants.W_OK | fsConstants.X_OK);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? String(err);
      throw new Error(`overlay directory ${dir} is not writable by ${target.who}: ${code}`);
    }
  }
}

/** process's POSIX credential calls (absent on Windows), bound to process. */
interface PosixIds {
  setgroups(groups: readonly number[]): void;
  setgid(id: number): void;
  setuid(id: number): void;
  getuid(): number;
  geteuid(): number;
  getgid(): number;
  getegid(): number;
}

function posixIds(): PosixIds | null {
  const p = process;
  if (!p.setgroups || !p.setgid || !p.setuid || !p.getuid || !p.geteuid || !p.getgid || !p.getegid) return null;
  return {
    setgroups: p.setgroups.bind(p),
    setgid: p.setgid.bind(p),
    setuid: p.setuid.bind(p),
    getuid: p.getuid.bind(p),
    geteuid: p.geteuid.bind(p),
    getgid: p.getgid.bind(p),
    getegid: p.getegid.bind(p),
  };
}

/** Whether setuid(0) succeeds; it must fail once the saved set-user-id is no longer 0. */
function canRegainRoot(ids: PosixIds): boolean {
  try {
    ids.setuid(0);
    return true;
  } catch {
    return false;
  }
}
