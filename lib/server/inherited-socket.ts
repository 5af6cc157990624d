// What an inherited listening socket (socket activation) really is, so the URI printed for it is
// the one clients use. TCP: net.Server.address() asks getsockname. A unix socket: Node's Pipe
// handle has no getsockname and address() is null for an fd it did not bind, so the path comes
// from /proc/self/net/unix, the row whose inode is the fd's (fstat). /proc/self/net and not
// /proc/net: systemd's ProcSubset=pid hides the latter (tried with a procfs mounted subset=pid).
// Abstract and unnamed sockets, a relative path, or no /proc (another OS, another network
// namespace) leave it unresolved.

import { fstatSync, readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import type { ListenAddress } from './listener.js';

export type InheritedAddress = Extract<ListenAddress, { kind: 'inherited' }>;

/** The tcp or unix address `inherited` turned out to be once listening (`bound`: server.address()), else itself. */
export function resolveInherited(inherited: InheritedAddress, bound: AddressInfo | string | null): ListenAddress {
  if (bound !== null && typeof bound === 'object') return { kind: 'tcp', host: bound.address, port: bound.port };
  if (typeof bound === 'string' && bound.startsWith('/')) return { kind: 'unix', path: bound };
  const path = unixSocketPath(inherited.fd);
  return path === null ? inherited : { kind: 'unix', path };
}

/** The file system path the unix socket `fd` is bound to, from /proc/self/net/unix; null if unknown. */
export function unixSocketPath(fd: number, table = '/proc/self/net/unix'): string | null {
  try {
    return findUnixPath(readFileSync(table, 'utf8'), fstatSync(fd).ino);
  } catch {
    return null;
  }
}

/**
 * In /proc/net/unix text (`Num RefCount Protocol Flags Type St Inode Path`), the path of the
 * socket with `inode`, when it is an absolute file path (abstract ones print as `@name`).
 */
export function findUnixPath(table: string, inode: number): string | null {
  for (const line of table.split('\n').slice(1)) {
    // Seven fields, then the path, which may itself hold spaces.
    const match = /^\s*\S+\s+\S+\s+\S+\s+\S+\s+\S+\s+\S+\s+(\d+)(?: (.*))?$/.exec(line);
    if (match === null || Number(match[1]) !== inode) continue;
    const path = match[2];
    return path?.startsWith('/') ? path : null;
  }
  return null;
}
