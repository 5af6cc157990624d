// Option haggling (proto.md "Option types"): one small handler per NBD_OPT_*, each taking the
// option's data and the negotiation state and returning the replies to send plus what happens
// next. No sockets here; connection.ts writes the replies.
//
// GO and EXPORT_NAME open the connection's device here, not in connection.ts: opening a named
// overlay can be refused (held by another process, made for another base), and that refusal
// must still become an NBD_REP_ERR_* reply. The open is asynchronous (lock file, overlay header
// and map), so these two return an 'opening' outcome whose promise settles into the real one:
// the GO's INFO replies and ACK (or its error) are sent only once the open has succeeded (or
// failed), and connection.ts parses nothing more meanwhile. Every other option is answered at
// once.
//
// TLS (proto.md "TLS support"): with --tls off, STARTTLS is refused (NOTLS). With `on`, the client
// may upgrade when it likes and every option works either way (SELECTIVETLS with no TLS-only
// export). With `require` (FORCEDTLS), every option but STARTTLS and ABORT gets
// NBD_REP_ERR_TLS_REQD until TLS runs, so LIST and INFO name no export, and EXPORT_NAME, which
// cannot carry an error, closes the connection. STARTTLS answers ACK and connection.ts upgrades
// the socket; negotiation then starts over (structured replies and meta contexts are forgotten).

import type { BlockDevice } from '../block/device.js';
import {
  MAX_PAYLOAD_ADVERTISED,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
  optionName,
} from '../protocol/constants.js';
import { OptionError } from '../protocol/errors.js';
import {
  decodeInfoRequest,
  decodeMetaContextRequest,
  encodeExportNameReply,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoText,
  encodeMetaContextPayload,
  encodeOptionReply,
  encodeServerReplyPayload,
} from '../protocol/handshake.js';
import { type ClientIdentity, type Export, type ExportRegistry, quoteName, transmissionFlags } from './exports.js';
import { HandOver } from './hand-over.js';
import { isWellFormedQuery, listContexts, type MetaContext, selectContexts } from './meta-contexts.js';
import type { TlsMode } from './tls-credentials.js';

export interface NegotiationState {
  structuredReplies: boolean;
  /** Contexts chosen by the last SET_META_CONTEXT, valid only for the export it named. */
  metaContexts: { readonly exp: Export; readonly contexts: readonly MetaContext[] } | null;
  /** The client set NBD_FLAG_C_NO_ZEROES. */
  readonly noZeroes: boolean;
  /** TLS runs on this connection (a STARTTLS succeeded). */
  readonly tls: boolean;
  /** The identity the client proved in its TLS handshake (PSK user, certificate name), if any. */
  readonly tlsIdentity: string | undefined;
  /** The TCP peer's IP address (for per-export allow lists); undefined for a unix-socket client. */
  readonly peerAddress: string | undefined;
  /** This connection may move to the worker that holds its named overlay (hand-over.ts); never once TLS runs. */
  readonly mayHandOver?: boolean;
}

/** What to do after an option, once any device open it started is over. */
export type SettledOutcome =
  /** Send the replies and go on; `refused` is the option's refusal, for the log. */
  | { readonly kind: 'continue'; readonly replies: Buffer[]; readonly refused?: OptionError }
  /** Send the ACK, then upgrade the socket to TLS and start negotiating again. */
  | { readonly kind: 'starttls'; readonly replies: Buffer[] }
  /** Send the replies (if any), then close: ABORT, or an EXPORT_NAME that cannot be served. */
  | { readonly kind: 'close'; readonly replies: Buffer[]; readonly reason: string }
  /** Send the replies, then enter transmission on `exp` with `device` (now the connection's). */
  | {
      readonly kind: 'transmission';
      readonly replies: Buffer[];
      readonly exp: Export;
      readonly device: BlockDevice;
      readonly flags: number;
      readonly contexts: readonly MetaContext[];
    }
  /** Send nothing: the named overlay is open in worker `owner`, which answers this option (hand-over.ts). */
  | { readonly kind: 'handover'; readonly owner: number; readonly holds: string };

export type OptionOutcome =
  | SettledOutcome
  /**
   * GO or EXPORT_NAME: the device is opening. Nothing is sent until `settled` gives the outcome;
   * it rejects only on an unexpected error (not a refusal), which closes the connection.
   */
  | { readonly kind: 'opening'; readonly settled: Promise<SettledOutcome> };

export interface OptionContext {
  readonly registry: ExportRegistry;
  readonly state: NegotiationState;
  readonly shuttingDown: boolean;
  readonly tlsMode: TlsMode;
}

type Handler = (payload: Buffer, option: number, ctx: OptionContext) => OptionOutcome;

const ack = (option: number): Buffer => encodeOptionReply(option, NBD_REP_ACK);

/** What the registry may check about the client: its TLS identity and session, and its address. */
function clientIdentity(state: NegotiationState): ClientIdentity {
  return { tlsIdentity: state.tlsIdentity, tls: state.tls, peerAddress: state.peerAddress };
}

function requireExport(ctx: OptionContext, name: string): Export {
  const exp = ctx.registry.lookup(name, clientIdentity(ctx.state));
  if (exp === undefined) throw new OptionError(NBD_REP_ERR_UNKNOWN, `unknown export ${quoteName(name)}`);
  return exp;
}

function requireEmpty(payload: Buffer, option: number): void {
  if (payload.length !== 0) throw new OptionError(NBD_REP_ERR_INVALID, `${optionName(option)} takes no data`);
}

/** The contexts chosen by SET_META_CONTEXT if they were for `exp` (by name: lookups may build new objects). */
function contextsFor(ctx: OptionContext, exp: Export): readonly MetaContext[] {
  return ctx.state.metaContexts?.exp.name === exp.name ? ctx.state.metaContexts.contexts : [];
}

/** An option refused: its NBD_REP_ERR_* reply with the message, and negotiation goes on. */
function refusal(option: number, err: OptionError): SettledOutcome {
  return {
    kind: 'continue',
    replies: [encodeOptionReply(option, err.replyType, Buffer.from(err.message, 'utf8'))],
    refused: err,
  };
}

/**
 * Start opening the connection's device on `exp`; once it is open, `opened` gives the outcome,
 * and a refusal (an OptionError) goes to `refused`.
 */
function openDevice(
  exp: Export,
  ctx: OptionContext,
  opened: (device: BlockDevice) => SettledOutcome,
  refused: (err: OptionError) => SettledOutcome,
): OptionOutcome {
  const settled = exp.openDevice().then(opened, (err: unknown) => {
    if (err instanceof OptionError) return refused(err);
    if (err instanceof HandOver) {
      if (ctx.state.mayHandOver === true) return { kind: 'handover' as const, owner: err.owner, holds: err.holds };
      return refused(new OptionError(NBD_REP_ERR_UNKNOWN, err.message));
    }
    throw err;
  });
  return { kind: 'opening', settled };
}

const handleExportName: Handler = (payload, _option, ctx) => {
  const name = payload.toString('utf8');
  // proto.md: EXPORT_NAME cannot carry an error; the server MUST drop the connection.
  const refuse = (why: string): SettledOutcome => ({
    kind: 'close',
    replies: [],
    reason: `NBD_OPT_EXPORT_NAME ${quoteName(name)}: ${why}`,
  });
  if (ctx.shuttingDown || payload.includes(0)) return refuse('unknown export');
  let exp: Export | undefined;
  try {
    exp = ctx.registry.lookup(name, clientIdentity(ctx.state));
  } catch (err) {
    if (err instanceof OptionError) return refuse(err.message);
    throw err;
  }
  if (exp === undefined) return refuse('unknown export');
  const flags = transmissionFlags(exp, ctx.state.structuredReplies);
  const replies = [encodeExportNameReply(exp.size, flags, ctx.state.noZeroes)];
  const contexts = contextsFor(ctx, exp);
  return openDevice(
    exp,
    ctx,
    (device) => ({ kind: 'transmission', replies, exp, device, flags, contexts }),
    (err) => refuse(err.message),
  );
};

const handleAbort: Handler = (_payload, option) => ({
  kind: 'close',
  replies: [ack(option)],
  reason: 'client sent NBD_OPT_ABORT',
});

const handleList: Handler = (payload, option, ctx) => {
  requireEmpty(payload, option);
  const replies = ctx.registry
    .list()
    .map((exp) => encodeOptionReply(option, NBD_REP_SERVER, encodeServerReplyPayload(exp.name, exp.description)));
  replies.push(ack(option));
  return { kind: 'continue', replies };
};

const handleStartTls: Handler = (payload, option, ctx) => {
  if (ctx.tlsMode === 'off') throw new OptionError(NBD_REP_ERR_POLICY, 'TLS is not enabled on this server');
  requireEmpty(payload, option);
  // proto.md: STARTTLS once TLS runs MUST get NBD_REP_ERR_INVALID.
  if (ctx.state.tls) throw new OptionError(NBD_REP_ERR_INVALID, 'TLS is already running');
  return { kind: 'starttls', replies: [ack(option)] };
};

const handleInfoOrGo: Handler = (payload, option, ctx) => {
  const request = decodeInfoRequest(payload);
  const exp = requireExport(ctx, request.exportName);
  const flags = transmissionFlags(exp, ctx.state.structuredReplies);
  // proto.md: NBD_INFO_EXPORT MUST be sent, requested or not; unknown requests are ignored.
  const replies = [encodeOptionReply(option, NBD_REP_INFO, encodeInfoExport(exp.size, flags))];
  const wanted = new Set(request.infoTypes);
  if (wanted.has(NBD_INFO_NAME)) {
    replies.push(encodeOptionReply(option, NBD_REP_INFO, encodeInfoText(NBD_INFO_NAME, exp.name)));
  }
  if (wanted.has(NBD_INFO_DESCRIPTION)) {
    replies.push(encodeOptionReply(option, NBD_REP_INFO, encodeInfoText(NBD_INFO_DESCRIPTION, exp.description)));
  }
  if (wanted.has(NBD_INFO_BLOCK_SIZE)) {
    const info = encodeInfoBlockSize(1, Math.max(512, exp.preferredBlockSize), MAX_PAYLOAD_ADVERTISED);
    replies.push(encodeOptionReply(option, NBD_REP_INFO, info));
  }
  replies.push(ack(option));
  if (option === NBD_OPT_INFO) return { kind: 'continue', replies };
  const contexts = contextsFor(ctx, exp);
  return openDevice(
    exp,
    ctx,
    (device) => ({ kind: 'transmission', replies, exp, device, flags, contexts }),
    (err) => refusal(option, err),
  );
};

const handleStructuredReply: Handler = (payload, option, ctx) => {
  requireEmpty(payload, option);
  if (ctx.state.structuredReplies) {
    throw new OptionError(NBD_REP_ERR_INVALID, 'structured replies are already negotiated');
  }
  ctx.state.structuredReplies = true;
  return { kind: 'continue', replies: [ack(option)] };
};

const handleMetaContext: Handler = (payload, option, ctx) => {
  const isSet = option === NBD_OPT_SET_META_CONTEXT;
  // SET replaces the previous selection even when it fails.
  if (isSet) ctx.state.metaContexts = null;
  if (!ctx.state.structuredReplies) {
    throw new OptionError(NBD_REP_ERR_INVALID, `${optionName(option)} needs structured replies first`);
  }
  const request = decodeMetaContextRequest(payload);
  const bad = request.queries.find((q) => !isWellFormedQuery(q));
  if (bad !== undefined) throw new OptionError(NBD_REP_ERR_INVALID, `malformed context query ${quoteName(bad)}`);
  const exp = requireExport(ctx, request.exportName);
  const contexts = isSet ? selectContexts(request.queries) : listContexts(request.queries);
  if (isSet) ctx.state.metaContexts = { exp, contexts };
  const replies = contexts.map((c) =>
    encodeOptionReply(option, NBD_REP_META_CONTEXT, encodeMetaContextPayload(isSet ? c.id : 0, c.name)),
  );
  replies.push(ack(option));
  return { kind: 'continue', replies };
};

const HANDLERS: Readonly<Record<number, Handler>> = {
  [NBD_OPT_EXPORT_NAME]: handleExportName,
  [NBD_OPT_ABORT]: handleAbort,
  [NBD_OPT_LIST]: handleList,
  [NBD_OPT_STARTTLS]: handleStartTls,
  [NBD_OPT_INFO]: handleInfoOrGo,
  [NBD_OPT_GO]: handleInfoOrGo,
  [NBD_OPT_STRUCTURED_REPLY]: handleStructuredReply,
  [NBD_OPT_LIST_META_CONTEXT]: handleMetaContext,
  [NBD_OPT_SET_META_CONTEXT]: handleMetaContext,
};

/**
 * Handle one option; refusals become NBD_REP_ERR_* replies and negotiation goes on. GO and
 * EXPORT_NAME give an 'opening' outcome unless refused before the open.
 */
export function handleOption(option: number, payload: Buffer, ctx: OptionContext): OptionOutcome {
  const handler = HANDLERS[option];
  try {
    if (ctx.shuttingDown && option !== NBD_OPT_ABORT && option !== NBD_OPT_EXPORT_NAME) {
      throw new OptionError(NBD_REP_ERR_SHUTDOWN, 'server is shutting down');
    }
    if (ctx.tlsMode === 'require' && !ctx.state.tls && option !== NBD_OPT_STARTTLS && option !== NBD_OPT_ABORT) {
      // proto.md FORCEDTLS: EXPORT_NAME cannot be refused with a reply, so the session ends.
      if (option === NBD_OPT_EXPORT_NAME) return { kind: 'close', replies: [], reason: 'NBD_OPT_EXPORT_NAME before STARTTLS' };
      throw new OptionError(NBD_REP_ERR_TLS_REQD, 'this server requires TLS: send NBD_OPT_STARTTLS first');
    }
    if (handler === undefined) {
      throw new OptionError(NBD_REP_ERR_UNSUP, `${optionName(option)} is not supported`);
    }
    return handler(payload, option, ctx);
  } catch (err) {
    if (!(err instanceof OptionError)) throw err;
    return refusal(option, err);
  }
}
