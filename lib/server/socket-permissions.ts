// Mode and group of a unix socket file. Connecting needs write permission on the file, so until
// they are set nobody else may connect: the socket is bound under umask 0177 (owner only) and
// chmod/chown follow at once, before the URI is printed.

import { chmodSync, chownSync } from 'node:fs';

export interface SocketPermissions {
  /** Permission bits (0 to 0o777); absent: what the umask gives, as without these options. */
  readonly mode?: number | undefined;
  /** Group to give the socket file; absent: the server's own. */
  readonly gid?: number | undefined;
}

/** Throw unless `mode` is a permission mode from 0 to 0o777. */
export function validateSocketMode(mode: number): void {
  if (!Number.isInteger(mode) || mode < 0 || mode > 0o777) {
    throw new Error(`socket mode ${mode} is not a permission mode from 0 to 0777`);
  }
}

/**
 * Run `bind`, which must create the socket file synchronously (net.Server.listen on a path does,
 * outside a cluster worker), under umask 0177. Returns the mode the file would have had under the
 * umask in force, the default when no mode is asked for. process.umask is process-wide, but the
 * window is one synchronous call: only a file created by a threadpool thread in that instant
 * would see it, and it would only come out more private.
 */
export function bindOwnerOnly(bind: () => void): number {
  const previous = process.umask(0o177);
  try {
    bind();
  } finally {
    process.umask(previous);
  }
  return 0o777 & ~previous;
}

/**
 * Give the socket file at `path` its group (when asked) and then `mode`, synchronously so that no
 * client is accepted in between. Throws one readable line.
 */
export function applySocketPermissions(path: string, mode: number, gid: number | undefined): void {
  try {
    if (gid !== undefined) chownSync(path, -1, gid);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? String(err);
    const hint = code === 'EPERM' ? ' (without root, only a group the server is a member of)' : '';
    throw Object.assign(new Error(`cannot give socket ${path} to group ${gid}: ${code}${hint}`), { code });
  }
  try {
    chmodSync(path, mode);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? String(err);
    throw Object.assign(new Error(`cannot set the mode of socket ${path} to 0${mode.toString(8)}: ${code}`), { code });
  }
}
