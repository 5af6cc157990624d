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

/** The fields of ServerOptions (lib/index.ts) this module reads; they are documented there. */
export interface AccessOptions {
  readonly listen: ListenAddress;
  readonly allow?: readonly string[];
  readonly maxConnections?: number;
  readonly socketMode?: number;
  readonly socketGroup?: string | number;
  readonly user?: string | number;
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
    socketPermissions: await socketPermissions(options),
    target: await privilegeTarget(options.user, options.group),
  };
}

async function socketPermissions(options: AccessOptions): Promise<SocketPermissions | undefined> {
  const { socketMode, socketGroup } = options;
  if (socketMode === undefined && socketGroup === undefined) return undefined;
  if (options.listen.kind !== 'unix') throw new Error('a socket mode or group applies to a unix socket only, not to TCP');
  if (socketMode !== undefined) validateSocketMode(socketMode);
  const gid = socketGroup !== undefined ? (await lookupGroup(socketGroup)).gid : undefined;
  return { mode: socketMode, gid };
}
