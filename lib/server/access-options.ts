// The access options of a server (allow list, connection cap, socket mode and group, the user
// and group to become) checked and resolved into what the listener and privileges.ts take, all
// before anything is created or bound, so bad input fails start-up with one line.

import type { Logger } from '../log.js';
import { AccessList } from './access-list.js';
import { lookupGroup } from './accounts.js';
import { type AdmissionPolicy, validateConnectionLimit } from './admission.js';
import type { ListenAddress } from './listener.js';
import { type PrivilegeTarget, privilegeTarget } from './privileges.js';
import { type SocketPermissions, validateSocketMode } from './socket-permissions.js';

/** Where a server listens and who may connect: part of ServerOptions (lib/index.ts). */
export interface AccessOptions {
  readonly listen: ListenAddress;
  /**
   * TCP clients that may connect: CIDR ranges or addresses (`10.0.0.0/8`, `::1`); IPv4-mapped
   * IPv6 peers match IPv4 ranges. Others are closed before the greeting. Default: everyone.
   * Unix-socket clients are not checked.
   */
  readonly allow?: readonly string[];
  /** Connections served at once (TCP and unix); one more is closed before the greeting. Default 1024. */
  readonly maxConnections?: number;
  /** Permission bits of the unix socket file (e.g. 0o660); default: what the umask gives. */
  readonly socketMode?: number;
  /** Group (name or gid) of the unix socket file; default: the server's. */
  readonly socketGroup?: string | number;
  /**
   * User (name or uid) to become once the listener is bound, the base opened and the overlay
   * directory made; needs root. Its primary group is taken unless `group` is given.
   */
  readonly user?: string | number;
  /** Group (name or gid) to become, with `user` or alone; supplementary groups are dropped. */
  readonly group?: string | number;
}

export interface ResolvedAccess {
  readonly admission: AdmissionPolicy;
  /** Undefined for TCP, or when neither a mode nor a group is asked for. */
  readonly socketPermissions: SocketPermissions | undefined;
  /** Who to become once start-up is done; null to stay as started. */
  readonly target: PrivilegeTarget | null;
}

export async function resolveAccess(options: AccessOptions, maxConnections: number, log: Logger): Promise<ResolvedAccess> {
  validateConnectionLimit(maxConnections);
  const allow = options.allow !== undefined ? new AccessList(options.allow) : undefined;
  if (allow !== undefined && options.listen.kind === 'unix') {
    log.warn('the allow list applies to TCP clients only: clients of a unix socket are not checked');
  }
  return {
    admission: { allow, maxConnections },
    socketPermissions: await listenerPermissions({ ...options, address: options.listen }),
    target: await privilegeTarget(options.user, options.group),
  };
}

/** The mode and group of a listener's unix socket file, checked; undefined when neither is asked for. */
export async function listenerPermissions(options: {
  readonly address: ListenAddress;
  readonly socketMode?: number;
  readonly socketGroup?: string | number;
}): Promise<SocketPermissions | undefined> {
  const { socketMode, socketGroup } = options;
  if (socketMode === undefined && socketGroup === undefined) return undefined;
  if (options.address.kind !== 'unix') throw new Error('a socket mode or group applies to a unix socket only, not to TCP');
  if (socketMode !== undefined) validateSocketMode(socketMode);
  const gid = socketGroup !== undefined ? (await lookupGroup(socketGroup)).gid : undefined;
  return { mode: socketMode, gid };
}
