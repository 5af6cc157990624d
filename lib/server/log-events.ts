// The operators' log of a running server, as a ServerEvents observer: one info line per connection
// event (connected, export chosen with what was negotiated, option refused, disconnected with its
// totals) and, at debug (-v), a trace of TLS, every request and the overlays' copy-ups, zeroed
// blocks and blocks written with no data (elided). Connections refused before the greeting are logged by admission.ts, rate-limited per
// reason, not here.
//
// Whether a level is on is decided once, here: an event whose level is off is a function that does
// nothing, so with debug off a request costs the server one empty call, no string and no object.

import type { LogFields, Logger } from '../log.js';
import {
  commandName,
  ERRNO_NAMES,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_UNSUP,
  optionName,
  REPLY_ERROR_NAMES,
} from '../protocol/constants.js';
import { isHandedOver } from './hand-over.js';
import type { ServerEvents, SessionRecord } from './server-events.js';

const OVERLAY_WORDS = { throwaway: 'throwaway overlay', named: 'named overlay', 'read-only': 'read-only, no overlay' };

/** `1 request`, `2 requests`. */
function plural(count: number, noun: string): string {
  return `${count} ${noun}${count === 1 ? '' : 's'}`;
}

function ignore(): void {
  /* this level is off */
}

/** `block 7`, `blocks 7-9`. */
function blockWords(first: number, count: number): string {
  return count === 1 ? `block ${first}` : `blocks ${first}-${first + count - 1}`;
}

/** `conn 3 (10.1.2.3:5000)`, as the server's other lines about a connection begin. */
function label(session: SessionRecord): string {
  return `conn ${session.id} (${session.peer})`;
}

function connectionFields(session: SessionRecord, event: string): Record<string, string | number> {
  return { event, conn: session.id, peer: session.peer };
}

/** `TLS TLSv1.3 TLS_AES_256_GCM_SHA384, identity alice`, or `no TLS`. */
function describeTls(session: SessionRecord): string {
  const tls = session.tls;
  return tls === null ? 'no TLS' : `TLS ${tls.protocol} ${tls.cipher}, identity ${tls.identity ?? '(none)'}`;
}

/** What the client negotiated, in words: replies, meta contexts, TLS. */
function describeFeatures(session: SessionRecord): string {
  const replies = session.structuredReplies ? 'structured replies' : 'simple replies';
  const contexts = session.metaContexts.length === 0 ? 'no meta context' : `meta contexts ${session.metaContexts.join(', ')}`;
  return `${replies}, ${contexts}; ${describeTls(session)}`;
}

function tlsFields(session: SessionRecord): LogFields {
  const tls = session.tls;
  if (tls === null) return { tls: false };
  return { tls: true, tls_protocol: tls.protocol, tls_cipher: tls.cipher, tls_identity: tls.identity ?? null };
}

function exportChosen(log: Logger, session: SessionRecord): void {
  const overlay = session.overlay ?? 'read-only';
  log.info(`${label(session)}: export "${session.exportName ?? ''}" (${OVERLAY_WORDS[overlay]}); ${describeFeatures(session)}`, {
    ...connectionFields(session, 'export'),
    export: session.exportName,
    overlay,
    structured_replies: session.structuredReplies,
    meta_contexts: session.metaContexts,
    ...tlsFields(session),
  });
}

function connectionClosed(log: Logger, session: SessionRecord, reason: string): void {
  const durationMs = Date.now() - session.openedAt;
  if (isHandedOver(reason)) {
    // Not a disconnection: the client goes on with the other worker (hand-over.ts).
    log.info(`${label(session)}: ${reason}`, { ...connectionFields(session, 'handover'), reason });
    return;
  }
  const overlayBytes = session.overlayBytes();
  const served =
    session.exportName === null
      ? 'before choosing an export'
      : `export "${session.exportName}", ${plural(session.requests, 'request')}, ${session.bytesRead} bytes read, ` +
        `${session.bytesWritten} bytes written, ${overlayBytes} bytes in the overlay`;
  log.info(`${label(session)}: disconnected (${reason}): ${served}, ${(durationMs / 1000).toFixed(3)} s`, {
    ...connectionFields(session, 'disconnect'),
    reason,
    export: session.exportName,
    overlay: session.overlay,
    requests: session.requests,
    bytes_read: session.bytesRead,
    bytes_written: session.bytesWritten,
    overlay_bytes: overlayBytes,
    duration_ms: durationMs,
  });
}

/**
 * A refused option: those about access (policy, TLS required, no such export, in use) at info
 * with the peer; an option this server does not know, or a malformed one, only at debug.
 */
function optionRefused(log: Logger, session: SessionRecord, option: number, replyType: number, message: string): void {
  const quiet = replyType === NBD_REP_ERR_UNSUP || replyType === NBD_REP_ERR_INVALID;
  if (!log.enabled(quiet ? 'debug' : 'info')) return;
  const name = optionName(option);
  const fields = {
    ...connectionFields(session, 'option-refused'),
    option: name,
    reply: REPLY_ERROR_NAMES[replyType] ?? `0x${replyType.toString(16)}`,
    reason: message,
  };
  const line = `${label(session)}: refused ${name}: ${message}`;
  if (quiet) log.debug(line, fields);
  else log.info(line, fields);
}

function requestDone(log: Logger, session: SessionRecord, command: number, errno: number, bytes: number, seconds: number): void {
  const name = commandName(command);
  const result = errno === 0 ? 'ok' : (ERRNO_NAMES[errno] ?? `errno ${errno}`);
  const ms = seconds * 1000;
  // Only READ and WRITE move payload bytes; the others say only their result.
  const moved = bytes > 0 ? ` ${bytes} bytes` : '';
  log.debug(`${label(session)}: ${name}${moved}: ${result} in ${ms.toFixed(3)} ms`, {
    ...connectionFields(session, 'request'),
    command: name,
    errno,
    bytes,
    duration_ms: ms,
  });
}

/** Log `log`'s share of what the server reports; each level is looked up once, now. */
export function logEvents(log: Logger): ServerEvents {
  const info = log.enabled('info');
  const debug = log.enabled('debug');
  return {
    connectionOpened: info ? (s) => log.info(`${label(s)}: connected`, connectionFields(s, 'connect')) : ignore,
    // admission.ts logs these itself: one line per second per reason, then a count.
    connectionRefused: ignore,
    optionRefused: (s, option, replyType, message) => optionRefused(log, s, option, replyType, message),
    tlsEstablished: debug
      ? (s) => log.debug(`${label(s)}: ${describeTls(s)}`, { ...connectionFields(s, 'tls'), ...tlsFields(s) })
      : ignore,
    exportChosen: info ? (s) => exportChosen(log, s) : ignore,
    requestDone: debug ? (s, command, errno, bytes, seconds) => requestDone(log, s, command, errno, bytes, seconds) : ignore,
    connectionClosed: info ? (s, reason) => connectionClosed(log, s, reason) : ignore,
    copiedUp: debug
      ? (path, block, from) =>
          log.debug(`overlay ${path}: block ${block} ${from === 'base' ? 'copied up from the base' : 'filled with zeros'}`, {
            event: 'copy-up',
            overlay_path: path,
            block,
            from,
          })
      : ignore,
    zeroed: debug
      ? (path, first, count) =>
          log.debug(`overlay ${path}: ${blockWords(first, count)} zeroed`, {
            event: 'zeroed',
            overlay_path: path,
            first_block: first,
            blocks: count,
          })
      : ignore,
    elided: debug
      ? (path, first, count, to) =>
          log.debug(
            `overlay ${path}: ${blockWords(first, count)} written ${to === 'zero' ? 'as zeros: zero state' : 'as the base holds them: base state'}, no data stored`,
            { event: 'elided', overlay_path: path, first_block: first, blocks: count, to },
          )
      : ignore,
  };
}
