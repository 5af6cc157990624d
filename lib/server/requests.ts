// Transmission requests: validate one (range, flags, read-only, size limits), run it against
// the BlockDevice, and build the reply as a list of buffers to write under one cork. Errors from
// the block layer become NBD errno replies here; the connection never sees them.

import type { BlockDevice, Extent } from '../block/device.js';
import type { Logger } from '../log.js';
import {
  commandName,
  MAX_PAYLOAD,
  NBD_CMD_BLOCK_STATUS,
  NBD_CMD_CACHE,
  NBD_CMD_DISC,
  NBD_CMD_FLAG_DF,
  NBD_CMD_FLAG_FAST_ZERO,
  NBD_CMD_FLAG_FUA,
  NBD_CMD_FLAG_NO_HOLE,
  NBD_CMD_FLAG_REQ_ONE,
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_TRIM,
  NBD_CMD_WRITE,
  NBD_CMD_WRITE_ZEROES,
  NBD_EINVAL,
  NBD_ENOSPC,
  NBD_ENOTSUP,
  NBD_EPERM,
} from '../protocol/constants.js';
import { NbdError, toNbdErrno } from '../protocol/errors.js';
import {
  encodeBlockStatusChunk,
  encodeErrorChunk,
  encodeNoneChunk,
  encodeOffsetDataHeader,
  encodeSimpleReply,
  type Request,
  type StatusDescriptor,
} from '../protocol/transmission.js';
import type { MetaContext } from './meta-contexts.js';

export interface Session {
  readonly device: BlockDevice;
  /** Allocates READ reply buffers (a pool); the connection releases them once written. */
  readonly allocate: (length: number) => Buffer;
  readonly structuredReplies: boolean;
  readonly contexts: readonly MetaContext[];
  readonly log: Logger;
}

// Flags each command accepts. FUA is valid on every command once SEND_FUA is advertised
// (proto.md: the server MUST accept it, even by ignoring it).
const ALLOWED_FLAGS: Readonly<Record<number, number>> = {
  [NBD_CMD_READ]: NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_DF,
  [NBD_CMD_WRITE]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_DISC]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_FLUSH]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_TRIM]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_CACHE]: NBD_CMD_FLAG_FUA,
  [NBD_CMD_WRITE_ZEROES]: NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_NO_HOLE | NBD_CMD_FLAG_FAST_ZERO,
  [NBD_CMD_BLOCK_STATUS]: NBD_CMD_FLAG_FUA | NBD_CMD_FLAG_REQ_ONE,
};

const WRITE_TYPE = new Set([NBD_CMD_WRITE, NBD_CMD_TRIM, NBD_CMD_WRITE_ZEROES]);

/** Why a request cannot run, or null. Pure: checks the header against the session. */
export function validateRequest(req: Request, session: Session): NbdError | null {
  const name = commandName(req.type);
  const allowed = ALLOWED_FLAGS[req.type];
  if (allowed === undefined) return new NbdError(NBD_EINVAL, `unknown command ${req.type}`);
  if ((req.flags & ~allowed) !== 0) {
    return new NbdError(NBD_EINVAL, `${name} with unsupported flags 0x${req.flags.toString(16)}`);
  }
  if ((req.flags & NBD_CMD_FLAG_DF) !== 0 && !session.structuredReplies) {
    return new NbdError(NBD_EINVAL, 'NBD_CMD_FLAG_DF without structured replies');
  }
  if (WRITE_TYPE.has(req.type) && !session.device.writable) {
    return new NbdError(NBD_EPERM, `${name} on a read-only export`);
  }
  if (req.type === NBD_CMD_FLUSH) {
    return req.offset === 0 && req.length === 0 ? null : new NbdError(NBD_EINVAL, 'NBD_CMD_FLUSH with offset or length');
  }
  if ((req.type === NBD_CMD_READ || req.type === NBD_CMD_WRITE) && req.length > MAX_PAYLOAD) {
    return new NbdError(NBD_EINVAL, `${name} of ${req.length} bytes exceeds the ${MAX_PAYLOAD}-byte limit`);
  }
  if (req.offset + req.length > session.device.size) {
    const errno = req.type === NBD_CMD_WRITE || req.type === NBD_CMD_WRITE_ZEROES ? NBD_ENOSPC : NBD_EINVAL;
    return new NbdError(errno, `${name} at ${req.offset}+${req.length} is past the end (${session.device.size})`);
  }
  if (req.type === NBD_CMD_BLOCK_STATUS && session.contexts.length === 0) {
    return new NbdError(NBD_EINVAL, 'NBD_CMD_BLOCK_STATUS without a negotiated meta context');
  }
  return null;
}

/** The reply to a failed request, in the negotiated reply style. */
export function errorReply(req: Request, err: NbdError, session: Session): Buffer[] {
  if (session.structuredReplies) return [encodeErrorChunk(req.cookie, err.errno, err.message)];
  return [encodeSimpleReply(err.errno, req.cookie)];
}

function doneReply(req: Request, session: Session): Buffer[] {
  return [session.structuredReplies ? encodeNoneChunk(req.cookie) : encodeSimpleReply(0, req.cookie)];
}

async function read(req: Request, session: Session): Promise<Buffer[]> {
  if (req.length === 0) return doneReply(req, session);
  const data = session.allocate(req.length);
  await session.device.read(req.offset, data);
  // The whole read is done before any header goes out: a simple reply cannot report an error
  // after its header. One OFFSET_DATA chunk also satisfies DF.
  if (!session.structuredReplies) return [encodeSimpleReply(0, req.cookie), data];
  return [encodeOffsetDataHeader(req.cookie, req.offset, req.length, true), data];
}

// Cap on descriptors per block status chunk (proto.md: SHOULD NOT exceed 2^20).
const MAX_EXTENTS = 1 << 16;

function clipExtents(extents: readonly Extent[], length: number): Extent[] {
  const out: Extent[] = [];
  let covered = 0;
  for (const extent of extents) {
    if (covered >= length) break;
    if (extent.length <= 0) break;
    const take = Math.min(extent.length, length - covered);
    out.push(take === extent.length ? extent : { ...extent, length: take });
    covered += take;
  }
  return out;
}

async function blockStatus(req: Request, session: Session): Promise<Buffer[]> {
  const reqOne = (req.flags & NBD_CMD_FLAG_REQ_ONE) !== 0;
  const length = Math.max(1, Math.min(req.length, session.device.size - req.offset));
  const extents = clipExtents(await session.device.extents(req.offset, length, reqOne ? 1 : MAX_EXTENTS), length);
  if (extents.length === 0) throw new NbdError(NBD_EINVAL, 'NBD_CMD_BLOCK_STATUS past the end');
  return session.contexts.map((ctx, i) =>
    encodeBlockStatusChunk(req.cookie, ctx.id, statusDescriptors(extents, ctx), i === session.contexts.length - 1),
  );
}

/** One context's view of the extents: neighbours with the same status merge into one descriptor. */
function statusDescriptors(extents: readonly Extent[], ctx: MetaContext): StatusDescriptor[] {
  const out: { length: number; flags: number }[] = [];
  for (const extent of extents) {
    const flags = ctx.status(extent);
    const last = out[out.length - 1];
    if (last !== undefined && last.flags === flags) last.length += extent.length;
    else out.push({ length: extent.length, flags });
  }
  return out;
}

async function writeZeroes(req: Request, session: Session): Promise<void> {
  const fua = (req.flags & NBD_CMD_FLAG_FUA) !== 0;
  const noHole = (req.flags & NBD_CMD_FLAG_NO_HOLE) !== 0;
  // FAST_ZERO: storing real zeros is no faster than a write, so fail fast before touching data.
  if (noHole && (req.flags & NBD_CMD_FLAG_FAST_ZERO) !== 0) {
    throw new NbdError(NBD_ENOTSUP, 'fast zero is not possible with NBD_CMD_FLAG_NO_HOLE');
  }
  await session.device.zero(req.offset, req.length, { fua, noHole });
}

/** A WRITE payload: one buffer, or (large ones) the pieces it arrived in. */
export type Payload = Buffer | readonly Buffer[];

function writePayload(device: BlockDevice, offset: number, payload: Payload, fua: boolean): Promise<void> {
  if (Buffer.isBuffer(payload)) return device.write(offset, payload, { fua });
  if (device.writev !== undefined) return device.writev(offset, payload, { fua });
  return device.write(offset, Buffer.concat(payload), { fua });
}

/** Run a validated request (not DISC) and build its reply. */
async function run(req: Request, payload: Payload | undefined, session: Session): Promise<Buffer[]> {
  const fua = (req.flags & NBD_CMD_FLAG_FUA) !== 0;
  const device = session.device;
  switch (req.type) {
    case NBD_CMD_READ:
      return read(req, session);
    case NBD_CMD_WRITE:
      if (req.length > 0) await writePayload(device, req.offset, payload ?? Buffer.alloc(0), fua);
      break;
    case NBD_CMD_FLUSH:
      await device.flush();
      break;
    case NBD_CMD_TRIM:
      if (req.length > 0) await device.trim(req.offset, req.length, { fua });
      break;
    case NBD_CMD_CACHE:
      if (req.length > 0) await device.cache(req.offset, req.length);
      break;
    case NBD_CMD_WRITE_ZEROES:
      if (req.length > 0) await writeZeroes(req, session);
      break;
    case NBD_CMD_BLOCK_STATUS:
      return blockStatus(req, session);
    default:
      throw new NbdError(NBD_EINVAL, `unknown command ${req.type}`);
  }
  return doneReply(req, session);
}

/** A request's reply, and the NBD errno it carries (0: success), for the logs and the metrics. */
export interface Served {
  readonly reply: Buffer[];
  readonly errno: number;
}

/** Validate and run one request; every outcome is a reply (errors included). */
export async function serveRequest(req: Request, payload: Payload | undefined, session: Session): Promise<Served> {
  const invalid = validateRequest(req, session);
  if (invalid !== null) {
    session.log.debug(`${commandName(req.type)} refused: ${invalid.message}`);
    return { reply: errorReply(req, invalid, session), errno: invalid.errno };
  }
  try {
    return { reply: await run(req, payload, session), errno: 0 };
  } catch (err) {
    const errno = toNbdErrno(err, {
      df: (req.flags & NBD_CMD_FLAG_DF) !== 0,
      fastZero: (req.flags & NBD_CMD_FLAG_FAST_ZERO) !== 0,
    });
    const message = err instanceof Error ? err.message : String(err);
    // Keep the real cause in the log before it is reduced to an errno.
    if (err instanceof NbdError) session.log.debug(`${commandName(req.type)} failed: ${message}`);
    else session.log.warn(`${commandName(req.type)} at ${req.offset}+${req.length} failed: ${message}`);
    return { reply: errorReply(req, new NbdError(errno, message), session), errno };
  }
}
