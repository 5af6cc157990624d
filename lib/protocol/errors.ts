// Error types of the protocol layer and the one table that maps a system error code to the
// NBD errno sent on the wire (after nbdkit's nbd_errno).

import {
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOMEM,
  NBD_ENOSPC,
  NBD_ENOTSUP,
  NBD_EOVERFLOW,
  NBD_EPERM,
  NBD_ESHUTDOWN,
} from './constants.js';

/** Fails one request (or one option); the connection lives on. */
export class NbdError extends Error {
  readonly errno: number;
  constructor(errno: number, message: string) {
    super(message);
    this.name = 'NbdError';
    this.errno = errno;
  }
}

/** Framing is lost or the peer broke a MUST: the connection has to close. */
export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolError';
  }
}

/** An option the server refuses with an NBD_REP_ERR_* reply; negotiation goes on. */
export class OptionError extends Error {
  readonly replyType: number;
  constructor(replyType: number, message: string) {
    super(message);
    this.name = 'OptionError';
    this.replyType = replyType;
  }
}

export interface ErrnoContext {
  /** The request carried NBD_CMD_FLAG_DF (EOVERFLOW is only allowed then). */
  readonly df?: boolean;
  /** The request carried NBD_CMD_FLAG_FAST_ZERO (ENOTSUP is only allowed then). */
  readonly fastZero?: boolean;
}

const SYSTEM_TO_NBD: Readonly<Record<string, number>> = {
  EPERM: NBD_EPERM,
  EROFS: NBD_EPERM,
  EACCES: NBD_EPERM,
  EIO: NBD_EIO,
  ENOMEM: NBD_ENOMEM,
  ENOSPC: NBD_ENOSPC,
  EDQUOT: NBD_ENOSPC,
  EFBIG: NBD_ENOSPC,
  ESHUTDOWN: NBD_ESHUTDOWN,
  EINVAL: NBD_EINVAL,
};

/** Map any error thrown while serving a request to the NBD errno to send. */
export function toNbdErrno(err: unknown, context: ErrnoContext = {}): number {
  if (err instanceof NbdError) return err.errno;
  const code = typeof err === 'object' && err !== null ? (err as { code?: unknown }).code : undefined;
  if (typeof code !== 'string') return NBD_EIO;
  if (code === 'EOVERFLOW') return context.df === true ? NBD_EOVERFLOW : NBD_EINVAL;
  if (code === 'ENOTSUP' || code === 'EOPNOTSUPP') {
    return context.fastZero === true ? NBD_ENOTSUP : NBD_EINVAL;
  }
  return Object.hasOwn(SYSTEM_TO_NBD, code) ? (SYSTEM_TO_NBD[code] as number) : NBD_EINVAL;
}
