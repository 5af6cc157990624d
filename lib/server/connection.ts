// One client connection: a state machine over received bytes
//   client-flags → option-header ⇄ option-data [⇄ opening | → tls-handshake → option-header]
//     → request-header [⇄ waiting-memory] ⇄ write-payload | discard-payload
// ending in closing (DISC or shutdown: finish in-flight requests, then end) or closed.
// tls-handshake: NBD_OPT_STARTTLS was acknowledged; the socket is upgraded (tls-upgrade.ts) and
// negotiation starts over once the handshake succeeds. The whole handshake, TLS included, must
// end within handshakeTimeoutMs. waiting-memory: the next READ or WRITE waits in line for the
// server-wide memory budget (memory-budget.ts), with the socket paused.
// opening: GO or EXPORT_NAME is opening the device (negotiation.ts). The socket is paused and
// nothing is parsed until the open settles; bytes the client pipelined after the option stay
// queued and are parsed then, under the outcome (transmission, or the GO's error reply), and a
// FIN that came meanwhile is acted on after them. If the connection closes during the open
// (reset, shutdown), the device that arrives late is closed unused; `closed` waits for that.
// Requests run concurrently; each reply is written as soon as it is ready (matched by cookie),
// and every reply finished in one event-loop turn leaves in one writev (reply-batcher.ts).
// Back-pressure: at the in-flight cap, or when too many bytes wait in the socket's write
// buffer, the socket is paused and parsing stops until there is room again.
// Reading: during the handshake, the socket's 'data' chunks. From transmission on, a socket
// without TLS is read in place (read-in-place.ts): into a scratch buffer the process shares,
// whose bytes are parsed or copied before the read callback returns, and a large WRITE's
// payload straight into a pooled buffer, given back once the WRITE is served.
// In a worker of --workers N (hand-over.ts), a GO whose named overlay (or remote base's block
// cache) another worker holds ends this connection's part without a reply: the socket and the
// handshake bytes go to that worker, whose Connection replays the earlier options muted and
// answers the GO itself.

import type { Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { BlockDevice } from '../block/device.js';
import { type BufferPool, POOL_MIN_BYTES } from '../buffer-pool.js';
import type { Logger } from '../log.js';
import {
  MAX_PAYLOAD,
  NBD_CMD_DISC,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  optionName,
} from '../protocol/constants.js';
import { type OptionError, ProtocolError } from '../protocol/errors.js';
import {
  CLIENT_FLAGS_SIZE,
  decodeClientFlags,
  decodeOptionHeader,
  encodeGreeting,
  OPTION_HEADER_SIZE,
  type OptionHeader,
} from '../protocol/handshake.js';
import { decodeRequest, REQUEST_SIZE, type Request } from '../protocol/transmission.js';
import { ByteQueue } from './byte-queue.js';
import type { ConnectionLimits } from './connection-limits.js';
import type { ExportRegistry } from './exports.js';
import { handedOverReason, MAX_HOPS, MAX_REPLAY_BYTES, type Replay } from './hand-over.js';
import type { BudgetHolder, MemoryBudget } from './memory-budget.js';
import { handleOption, type NegotiationState, type SettledOutcome } from './negotiation.js';
import { readInPlace, sharedReadBuffer } from './read-in-place.js';
import { ReplyBatcher } from './reply-batcher.js';
import { RequestFlow } from './request-flow.js';
import { errorReply, type Payload, type Served, type Session, serveRequest, validateRequest } from './requests.js';
import type { ServerEvents, SessionRecord } from './server-events.js';
import type { TlsSettings } from './tls-credentials.js';
import { startTls } from './tls-upgrade.js';

type State =
  | 'client-flags'
  | 'option-header'
  | 'option-data'
  | 'opening'
  | 'tls-handshake'
  | 'request-header'
  | 'waiting-memory'
  | 'write-payload'
  | 'discard-payload'
  | 'closing'
  | 'closed';

export interface ConnectionOptions {
  readonly registry: ExportRegistry;
  readonly log: Logger;
  readonly limits: ConnectionLimits;
  /** A short label for log lines, e.g. the peer address. */
  readonly label: string;
  /** The listener's number for this connection, and its peer (SessionRecord's fields). */
  readonly id: number;
  readonly peer: string;
  /** Where the connection reports what happens to it (logs, metrics). */
  readonly events: ServerEvents;
  /** Large READ reply buffers come from here and go back once written. */
  readonly buffers: BufferPool;
  /** Bytes of payloads and unsent replies, shared by every connection. */
  readonly budget: MemoryBudget;
  readonly tls: TlsSettings;
  /** A worker's: move the connection to worker `owner`, which holds the named overlay its GO names. */
  readonly handOver?: (socket: Socket, replay: Replay, owner: number) => void;
  /** A connection handed over by another worker: go on from there (no greeting; earlier options muted). */
  readonly replay?: Replay;
}

export class Connection implements BudgetHolder {
  readonly label: string;
  /** Resolves once the socket is gone and the device (and its overlay) is closed. */
  readonly closed: Promise<void>;
  #socket: Socket;
  #replies: ReplyBatcher;
  #options: ConnectionOptions;
  #log: Logger;
  #queue = new ByteQueue();
  #state: State = 'client-flags';
  #option: OptionHeader = { option: 0, length: 0 };
  #optionCount = 0;
  /** With handOver: the bytes of the handshake so far (client flags, then each option's header and data). */
  #handshakeLog: Buffer[] | null;
  #handshakeLogBytes = 0;
  /** Replaying a handed-over handshake: its replies went out from the other worker already. */
  #muted = false;
  #negotiation: NegotiationState = {
    structuredReplies: false,
    metaContexts: null,
    noZeroes: false,
    tls: false,
    tlsIdentity: undefined,
    peerAddress: undefined,
  };
  #session: Session | null = null;
  /** The connection's device, from the end of a successful open; closed by #close. */
  #device: BlockDevice | null = null;
  /** The device open started by GO / EXPORT_NAME, until its outcome is handled. */
  #opening: Promise<void> | null = null;
  /** The outcome of that open, waiting for the 'opening' step to apply it. */
  #opened: SettledOutcome | null = null;
  /** The client's FIN arrived during the open, after everything it sent. */
  #endedWhileOpening = false;
  /** Until transmission starts: drops a client that takes too long to choose an export. */
  #handshakeTimer: NodeJS.Timeout | null;
  #pendingWrite: Request | null = null;
  /** Reading the socket in place (read-in-place.ts): from transmission on, for a socket without TLS. */
  #inPlace = false;
  /** A large WRITE's payload read straight into its pooled buffer: `filled` bytes of it so far. */
  #payload: { readonly req: Request; readonly buffer: Buffer; filled: number } | null = null;
  /** In waiting-memory: the READ or WRITE waiting for its bytes of the budget. */
  #waitingRequest: Request | null = null;
  #allocate: (length: number) => Buffer;
  #discardRemaining = 0;
  /** Requests in flight and bytes held, against the limits and the memory budget. */
  #flow: RequestFlow;
  #paused = false;
  #shuttingDown = false;
  /**
   * Why #beginClosing was called: the reason the observers get, even when the socket then fails
   * (a client that sends NBD_OPT_ABORT and hangs up at once makes the ACK's write fail with EPIPE).
   */
  #closingReason: string | null = null;
  #resolveClosed: () => void = () => undefined;
  #onIdle: (() => void) | null = null;
  /** What the session list and the observers see of this connection. */
  readonly record: SessionRecord;

  constructor(socket: Socket, options: ConnectionOptions) {
    this.#socket = socket;
    this.#replies = new ReplyBatcher(socket, options.buffers);
    this.#options = options;
    this.#log = options.log;
    this.label = options.label;
    // A unix-socket peer has no address: per-export allow lists do not apply to it.
    this.#negotiation = { ...this.#negotiation, peerAddress: socket.remoteAddress };
    this.#allocate = (length) => options.buffers.acquire(length);
    this.#flow = new RequestFlow(options.limits, options.budget);
    this.closed = new Promise((resolve) => {
      this.#resolveClosed = resolve;
    });
    const timeout = options.limits.handshakeTimeoutMs;
    this.#handshakeTimer = setTimeout(() => this.#close(`no export chosen within ${timeout / 1000} s`), timeout);
    this.record = {
      id: options.id,
      peer: options.peer,
      openedAt: Date.now(),
      exportName: null,
      configuredExport: null,
      overlay: null,
      structuredReplies: false,
      metaContexts: [],
      tls: null,
      requests: 0,
      bytesRead: 0,
      bytesWritten: 0,
      overlayBytes: () => this.#device?.dataBytes?.() ?? 0,
    };
    this.#handshakeLog = options.handOver === undefined ? null : [];
    this.#negotiation = { ...this.#negotiation, mayHandOver: this.#mayHandOver() };
    const relayedTls = options.replay?.tls;
    if (relayedTls !== undefined) {
      // Relayed by the worker that holds the TLS session: negotiation goes on after STARTTLS.
      this.#negotiation = {
        ...this.#negotiation,
        tls: true,
        tlsIdentity: relayedTls.identity,
        noZeroes: relayedTls.noZeroes,
        peerAddress: relayedTls.peerAddress,
      };
      this.record.tls = { protocol: relayedTls.protocol, cipher: relayedTls.cipher, identity: relayedTls.identity };
      this.#state = 'option-header';
    }
    socket.setNoDelay(true);
    this.#listen(socket);
    if (options.replay === undefined) socket.write(encodeGreeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES));
    options.events.connectionOpened(this.record);
    if (options.replay !== undefined) this.#replay(options.replay);
  }

  /** Whether this connection may still move to another worker (hand-over.ts). */
  #mayHandOver(): boolean {
    return this.#options.handOver !== undefined && (this.#options.replay?.hops ?? 0) < MAX_HOPS;
  }

  /** Go on with a handed-over connection: the earlier options muted, then the GO and what followed. */
  #replay(replay: Replay): void {
    this.#muted = true;
    this.#queue.push(replay.handshake);
    this.#process();
    this.#muted = false;
    if (this.#state !== 'option-header' || this.#queue.length > 0) {
      this.#close('protocol error: a handed-over handshake did not end before its GO');
      return;
    }
    this.#queue.push(replay.pending);
    this.#process();
  }

  /**
   * Record handshake bytes (with handOver, until transmission or TLS): the replay if the
   * connection moves. Copies, so no received chunk is held; past MAX_REPLAY_BYTES (real clients
   * send a few hundred) recording stops and the connection can no longer move.
   */
  #logged(bytes: Buffer): Buffer {
    const log = this.#handshakeLog;
    if (log === null) return bytes;
    this.#handshakeLogBytes += bytes.length;
    if (this.#handshakeLogBytes > MAX_REPLAY_BYTES) {
      this.#handshakeLog = null;
      this.#negotiation = { ...this.#negotiation, mayHandOver: false };
    } else {
      log.push(Buffer.from(bytes));
    }
    return bytes;
  }

  readonly #onData = (chunk: Buffer): void => {
    this.#queue.push(chunk);
    this.#process();
  };

  /** Where the next read in place goes: the rest of a large WRITE's payload, or the shared scratch. */
  readonly #nextReadBuffer = (): Buffer => {
    const payload = this.#payload;
    return payload === null ? sharedReadBuffer() : payload.buffer.subarray(payload.filled);
  };

  /** A read in place: bytes of the payload being read, or bytes in the shared scratch, used or copied now. */
  readonly #onReadInPlace = (nread: number, buffer: Buffer): boolean => {
    const payload = this.#payload;
    if (buffer !== sharedReadBuffer() && payload !== null) {
      payload.filled += nread;
      this.#process(); // the write-payload step serves it once it is whole
      return true;
    }
    this.#queue.pushVolatile(buffer.subarray(0, nread));
    this.#process();
    this.#queue.settle();
    return true;
  };

  /**
   * From the start of transmission on, a socket without TLS is read in place (read-in-place.ts):
   * what it had buffered goes to the queue first, and 'data' events stop.
   */
  #startReadingInPlace(): void {
    const socket = this.#socket;
    if (this.#negotiation.tls) return;
    socket.off('data', this.#onData);
    for (const chunk of readBuffered(socket)) this.#queue.push(chunk);
    this.#inPlace = readInPlace(socket, this.#nextReadBuffer, this.#onReadInPlace);
    if (!this.#inPlace) socket.on('data', this.#onData);
  }

  /**
   * A large WRITE read in place: its payload goes into a pooled buffer, from the queue what is
   * there (bytes read before the buffer was handed out) and from the socket the rest (read
   * straight into it). Served, and true, once whole; false while bytes are still to come.
   */
  #fillPayload(req: Request): boolean {
    let payload = this.#payload;
    if (payload === null) {
      payload = { req, buffer: this.#options.buffers.acquire(req.length), filled: 0 };
      this.#payload = payload;
    }
    const queued = Math.min(this.#queue.length, req.length - payload.filled);
    this.#queue.takeInto(payload.buffer.subarray(payload.filled, payload.filled + queued));
    payload.filled += queued;
    if (payload.filled < req.length) return false;
    this.#payload = null;
    this.#pendingWrite = null;
    this.#state = 'request-header';
    this.#dispatch(req, payload.buffer, payload.buffer);
    return true;
  }

  readonly #onDrain = (): void => {
    this.#flow.drained(this.#queuedReplyBytes());
    this.#process();
  };

  // The server socket allows half-open connections: a client may send DISC and then FIN, and
  // still gets the replies to its in-flight requests (proto.md: the server MUST handle all
  // outstanding requests).
  readonly #onEnd = (): void => {
    if (this.#state === 'opening') this.#endedWhileOpening = true;
    else if (this.#session !== null && this.#flow.inFlight > 0) this.#beginClosing('client closed its side');
    else this.#close('client closed the connection');
  };

  readonly #onError = (err: Error): void => this.#close(`socket error: ${err.message}`);
  readonly #onClose = (): void => this.#close('socket closed');

  #listen(socket: Socket): void {
    socket.on('data', this.#onData);
    socket.on('drain', this.#onDrain);
    socket.on('end', this.#onEnd);
    socket.on('error', this.#onError);
    socket.on('close', this.#onClose);
  }

  #unlisten(socket: Socket): void {
    socket.off('data', this.#onData);
    socket.off('drain', this.#onDrain);
    socket.off('end', this.#onEnd);
    socket.off('error', this.#onError);
    socket.off('close', this.#onClose);
  }

  /** Drop the socket at once, whatever is still queued for it (end of a shutdown grace period). */
  destroy(): void {
    this.#socket.destroy();
    this.#close('destroyed');
  }

  /** Whether the connection reached transmission (an export was chosen). */
  get inTransmission(): boolean {
    return this.#session !== null;
  }

  /** Reply bytes waiting in the socket for the client to read them (BudgetHolder). */
  queuedBytes(): number {
    return this.#socket.writableLength;
  }

  /** The budget's watchdog found this client not reading while others wait (BudgetHolder). */
  evict(reason: string): void {
    this.#log.warn(`${this.label}: dropped: ${reason}`);
    this.destroy();
  }

  /**
   * Server shutdown: a negotiating client is dropped; a transmitting one gets replies to the
   * requests already in flight, then the connection ends.
   */
  shutdown(): Promise<void> {
    this.#shuttingDown = true;
    if (this.#session === null) this.#close('server shutting down');
    else this.#beginClosing('server shutting down');
    return this.closed;
  }

  /** Parse everything parseable in the queue, one state step at a time. */
  #process(): void {
    try {
      while (this.#step()) {
        /* keep stepping */
      }
    } catch (err) {
      const reason = err instanceof ProtocolError ? `protocol error: ${err.message}` : `internal error: ${String(err)}`;
      if (!(err instanceof ProtocolError)) this.#log.error(`${this.label}: ${reason}`);
      this.#close(reason);
    }
    this.#updateFlow();
  }

  /** Take one step; false when more bytes (or room) are needed. */
  #step(): boolean {
    const queue = this.#queue;
    switch (this.#state) {
      case 'client-flags':
        if (queue.length < CLIENT_FLAGS_SIZE) return false;
        return this.#onClientFlags(decodeClientFlags(this.#logged(queue.take(CLIENT_FLAGS_SIZE))));
      case 'option-header':
        if (queue.length < OPTION_HEADER_SIZE) return false;
        return this.#onOptionHeader(decodeOptionHeader(this.#logged(queue.take(OPTION_HEADER_SIZE))));
      case 'option-data':
        if (queue.length < this.#option.length) return false;
        return this.#onOption(this.#logged(queue.take(this.#option.length)));
      case 'opening': {
        const opened = this.#opened;
        if (opened === null) return false;
        this.#opened = null;
        // A GO that opened nothing here: replaying it elsewhere would open again, so no later move.
        if (opened.kind !== 'handover') this.#negotiation = { ...this.#negotiation, mayHandOver: false };
        return this.#onOutcome(opened);
      }
      case 'request-header':
        if (this.#flow.mustWait || queue.length < REQUEST_SIZE) return false;
        return this.#onRequest(decodeRequest(queue.take(REQUEST_SIZE)));
      case 'write-payload': {
        const req = this.#pendingWrite as Request; // set whenever the state is write-payload
        if (this.#inPlace && req.length >= POOL_MIN_BYTES) return this.#fillPayload(req);
        if (queue.length < req.length) return false;
        this.#pendingWrite = null;
        this.#state = 'request-header';
        // A large payload (on a TLS socket: a plain one reads it in place) stays in the pieces it
        // arrived in: the overlay takes them as they are (pwritev), which saves copying every
        // byte once more on the event loop.
        this.#dispatch(req, req.length >= POOL_MIN_BYTES ? queue.takeChunks(req.length) : queue.take(req.length));
        return true;
      }
      case 'discard-payload':
        this.#discardRemaining -= queue.skip(this.#discardRemaining);
        if (this.#discardRemaining > 0) return false;
        this.#state = 'request-header';
        return true;
      case 'tls-handshake':
      case 'waiting-memory':
      case 'closing':
      case 'closed':
        return false;
    }
  }

  #onClientFlags(flags: number): boolean {
    // proto.md: the server MUST drop the connection on a client flag it does not know.
    if ((flags & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)) !== 0) {
      throw new ProtocolError(`unknown client flags 0x${flags.toString(16)}`);
    }
    this.#negotiation = { ...this.#negotiation, noZeroes: (flags & NBD_FLAG_C_NO_ZEROES) !== 0 };
    this.#state = 'option-header';
    return true;
  }

  #onOptionHeader(header: OptionHeader): boolean {
    const limits = this.#options.limits;
    if (header.length > limits.maxOptionLength) {
      throw new ProtocolError(`${optionName(header.option)} with ${header.length} bytes of data`);
    }
    if (++this.#optionCount > limits.maxOptions) {
      throw new ProtocolError(`more than ${limits.maxOptions} options without choosing an export`);
    }
    this.#option = header;
    this.#state = 'option-data';
    return true;
  }

  #onOption(payload: Buffer): boolean {
    const option = this.#option.option;
    this.#log.debug(`${this.label}: ${optionName(option)} (${payload.length} bytes)`);
    const outcome = handleOption(option, payload, {
      registry: this.#options.registry,
      state: this.#negotiation,
      shuttingDown: this.#shuttingDown,
      tlsMode: this.#options.tls.mode,
    });
    if (outcome.kind !== 'opening') return this.#onOutcome(outcome);
    this.#state = 'opening';
    this.#opening = outcome.settled.then(
      (opened) => this.#onOpened(opened),
      (err: unknown) => {
        this.#log.error(`${this.label}: opening the device failed unexpectedly: ${String(err)}`);
        this.#close('internal error');
      },
    );
    return false;
  }

  /** The device open is over: apply its outcome, unless the connection is gone by now. */
  #onOpened(opened: SettledOutcome): void {
    if (this.#state !== 'opening') {
      // Closed while opening: #close waits for #opening, then closes this device.
      if (opened.kind === 'transmission') this.#device = opened.device;
      return;
    }
    this.#opened = opened;
    this.#process();
    // The client sent its last bytes and a FIN during the open: answer them, then close.
    if (this.#endedWhileOpening && this.#state !== 'opening') this.#beginClosing('client closed its side');
  }

  #onOutcome(outcome: SettledOutcome): boolean {
    if (outcome.kind === 'starttls') return this.#startTls(outcome.replies);
    if (outcome.kind === 'handover') {
      this.#handOver(outcome.owner, outcome.holds);
      return false;
    }
    // A replayed option's replies went out from the worker that answered it (hand-over.ts).
    if (!this.#muted) this.#writeAll(outcome.replies);
    switch (outcome.kind) {
      case 'continue':
        if (outcome.refused !== undefined) this.#reportRefusal(outcome.refused);
        this.#state = 'option-header';
        return true;
      case 'close':
        // The observers' disconnect line gives the reason (log-events.ts).
        this.#beginClosing(outcome.reason);
        return false;
      case 'transmission':
        this.#clearHandshakeTimer();
        this.#handshakeLog = null;
        this.#device = outcome.device;
        this.#session = {
          device: outcome.device,
          structuredReplies: this.#negotiation.structuredReplies,
          contexts: outcome.contexts,
          log: this.#log,
          allocate: this.#allocate,
        };
        this.#options.budget.register(this);
        // The transmission flags, for debugging (test/guest reads them); log-events.ts logs the rest.
        this.#log.debug(`${this.label}: serving export "${outcome.exp.name}" flags 0x${outcome.flags.toString(16)}`);
        this.record.exportName = outcome.exp.name;
        this.record.configuredExport = outcome.exp.overlayOf ?? outcome.exp.name;
        this.record.overlay = outcome.exp.readOnly ? 'read-only' : outcome.exp.multiConn === true ? 'named' : 'throwaway';
        this.record.structuredReplies = this.#negotiation.structuredReplies;
        this.record.metaContexts = outcome.contexts.map((c) => c.name);
        this.#options.events.exportChosen(this.record);
        this.#state = 'request-header';
        this.#startReadingInPlace();
        return true;
    }
  }

  /** Report a refused option to the observers (log-events.ts logs it, with the peer). */
  #reportRefusal(refused: OptionError): void {
    if (this.#muted) return; // logged by the worker that answered it
    this.#options.events.optionRefused(this.record, this.#option.option, refused.replyType, refused.message);
  }

  /** NBD_OPT_STARTTLS was accepted: send the ACK in clear, then upgrade the socket. */
  #startTls(replies: readonly Buffer[]): boolean {
    const credentials = this.#options.tls.credentials;
    if (credentials === null) throw new Error('STARTTLS accepted without TLS credentials');
    this.#state = 'tls-handshake';
    // The options before STARTTLS do not count (proto.md): a relay replays those after it (#onSecure).
    this.#handshakeLog = null;
    this.#replies.flush();
    const plain = this.#socket;
    startTls(plain, Buffer.concat(replies), credentials, {
      upgrading: () => {
        if (this.#state !== 'tls-handshake') return false;
        // proto.md: the client upgrades once it has the ACK; bytes before that are not TLS.
        if (this.#queue.length > 0) {
          this.#close('protocol error: data after NBD_OPT_STARTTLS before the TLS handshake');
          return false;
        }
        this.#unlisten(plain);
        return true;
      },
      secure: (socket, identity) => this.#onSecure(socket, identity),
      failed: (reason) => this.#close(reason),
    });
    return false;
  }

  /** The TLS handshake succeeded: serve over `secure`, negotiating from scratch (proto.md). */
  #onSecure(secure: TLSSocket, identity: string | undefined): void {
    if (this.#state !== 'tls-handshake') {
      secure.destroy();
      return;
    }
    this.#socket = secure;
    this.#replies = new ReplyBatcher(secure, this.#options.buffers);
    this.#listen(secure);
    this.#negotiation = {
      structuredReplies: false,
      metaContexts: null,
      noZeroes: this.#negotiation.noZeroes,
      tls: true,
      tlsIdentity: identity,
      peerAddress: this.#negotiation.peerAddress,
      mayHandOver: this.#mayHandOver(),
    };
    if (this.#options.handOver !== undefined) {
      this.#handshakeLog = [];
      this.#handshakeLogBytes = 0;
    }
    this.record.tls = { protocol: secure.getProtocol() ?? '', cipher: secure.getCipher().name, identity };
    this.#options.events.tlsEstablished(this.record);
    this.#state = 'option-header';
    this.#process();
  }

  #onRequest(req: Request): boolean {
    const session = this.#session as Session; // request-header is only reached with a session
    if (req.type === NBD_CMD_DISC) {
      this.#beginClosing('client sent NBD_CMD_DISC');
      return false;
    }
    const buffered = req.type === NBD_CMD_READ || (req.type === NBD_CMD_WRITE && req.length > 0);
    if (!buffered || req.length > MAX_PAYLOAD) {
      if (req.type === NBD_CMD_WRITE && req.length > 0) return this.#discardPayload(req, session);
      this.#dispatch(req, undefined);
      return true;
    }
    // A READ's reply or a WRITE's payload will be held in memory: take its bytes from the budget
    // first, or wait in line for them with the socket paused.
    if (!this.#flow.reserve(req.length, this.#memoryGranted)) {
      this.#waitingRequest = req;
      this.#state = 'waiting-memory';
      return false;
    }
    return this.#admit(req);
  }

  /** The budget took the waiting request's bytes for this connection (#close leaves the line first). */
  readonly #memoryGranted = (): void => {
    const req = this.#waitingRequest as Request; // set whenever the state is waiting-memory
    this.#waitingRequest = null;
    this.#state = 'request-header';
    this.#admit(req);
    this.#process();
  };

  /** The request's bytes are taken from the budget: read its payload or dispatch it. */
  #admit(req: Request): boolean {
    if (req.type === NBD_CMD_READ) {
      this.#dispatch(req, undefined);
      return true;
    }
    // Even a write that will be refused has its payload read, so framing survives.
    this.#pendingWrite = req;
    this.#state = 'write-payload';
    return true;
  }

  /** A WRITE too big to buffer: answer now and stream the payload away without keeping it. */
  #discardPayload(req: Request, session: Session): boolean {
    const invalid = validateRequest(req, session);
    if (invalid !== null) this.#writeAll(errorReply(req, invalid, session));
    this.#discardRemaining = req.length;
    this.#state = 'discard-payload';
    return true;
  }

  /** Serve `req`; `pooled`, its payload's buffer from the pool, goes back once the request is served. */
  #dispatch(req: Request, payload: Payload | undefined, pooled?: Buffer): void {
    const session = this.#session as Session; // requests are only dispatched with a session
    const cost = (req.type === NBD_CMD_READ || req.type === NBD_CMD_WRITE) && req.length <= MAX_PAYLOAD ? req.length : 0;
    this.#flow.started();
    const started = performance.now();
    serveRequest(req, payload, session).then(
      (served) => {
        // Served: the device is done with the payload (a failure below leaves it to the collector).
        if (pooled !== undefined) this.#options.buffers.release(pooled);
        this.#finish(req, cost, served, started);
      },
      (err: unknown) => {
        this.#log.error(`${this.label}: request failed unexpectedly: ${String(err)}`);
        this.#finish(req, cost, null, started);
        this.#close('internal error');
      },
    );
  }

  #finish(req: Request, cost: number, served: Served | null, started: number): void {
    if (served !== null) {
      this.#writeAll(served.reply);
      this.#count(req, served.errno, started);
    }
    this.#flow.finished(cost, this.#queuedReplyBytes());
    if (this.#flow.inFlight === 0 && this.#onIdle !== null) {
      const onIdle = this.#onIdle;
      this.#onIdle = null;
      onIdle();
    }
    if (this.#state === 'request-header' || this.#state === 'write-payload') this.#process();
  }

  /** Count an answered request in the session record and report it. */
  #count(req: Request, errno: number, started: number): void {
    const record = this.record;
    record.requests++;
    const moved = errno === 0 && (req.type === NBD_CMD_READ || req.type === NBD_CMD_WRITE) ? req.length : 0;
    if (req.type === NBD_CMD_READ) record.bytesRead += moved;
    else record.bytesWritten += moved;
    this.#options.events.requestDone(record, req.type, errno, moved, (performance.now() - started) / 1000);
  }

  /** Reply bytes waiting in the socket; none once the connection is closed (they will never go). */
  #queuedReplyBytes(): number {
    return this.#state === 'closed' ? 0 : this.#socket.writableLength;
  }

  /** Pause the socket while parsing must wait; resume when it may go on. */
  #updateFlow(): void {
    const state = this.#state;
    // During the TLS handshake the socket belongs to the handshake: it must keep reading.
    if (state === 'closed' || state === 'tls-handshake') return;
    const wait =
      state === 'closing' ||
      state === 'opening' ||
      state === 'waiting-memory' ||
      (state === 'request-header' && this.#flow.mustWait);
    if (wait && !this.#paused) {
      this.#paused = true;
      this.#socket.pause();
    } else if (!wait && this.#paused) {
      this.#paused = false;
      this.#socket.resume();
    }
  }

  /**
   * What the GO opens is held by worker `owner` (its named overlay, its remote base's block cache): give it the socket, unread from here on, and
   * the handshake to replay (hand-over.ts). This connection ends here without a reply.
   */
  #handOver(owner: number, holds: string): void {
    const handOver = this.#options.handOver;
    const log = this.#handshakeLog;
    // At least the GO's header and data (and the client flags, without TLS).
    if (handOver === undefined || log === null || log.length < 2) throw new Error('a hand-over without a recorded handshake');
    const socket = this.#socket;
    this.#unlisten(socket);
    socket.pause();
    const after: Buffer[] = [this.#queue.take(this.#queue.length), ...readBuffered(socket)];
    const replay: Replay = {
      handshake: Buffer.concat(log.slice(0, -2)),
      pending: Buffer.concat([...log.slice(-2), ...after]),
      hops: (this.#options.replay?.hops ?? 0) + 1,
      ...(this.#negotiation.tls && this.record.tls !== null
        ? {
            tls: {
              peer: this.record.peer,
              peerAddress: this.#negotiation.peerAddress,
              identity: this.#negotiation.tlsIdentity,
              noZeroes: this.#negotiation.noZeroes,
              protocol: this.record.tls.protocol,
              cipher: this.record.tls.cipher,
            },
          }
        : {}),
    };
    this.#handshakeLog = null;
    this.#clearHandshakeTimer();
    this.#state = 'closed';
    this.#flow.releaseAll();
    this.#options.events.connectionClosed(this.record, handedOverReason(owner, replay.tls !== undefined, holds));
    this.#resolveClosed();
    handOver(socket, replay, owner);
  }

  /** Send replies (each message whole, batched per event: reply-batcher.ts). */
  #writeAll(messages: readonly Buffer[]): void {
    if (this.#state === 'closed' || messages.length === 0) return;
    this.#flow.written(this.#replies.write(messages));
  }

  /** Stop reading; once every in-flight request has replied, end the socket. */
  #beginClosing(reason: string): void {
    if (this.#state === 'closing' || this.#state === 'closed') return;
    this.#leaveMemoryLine();
    this.#state = 'closing';
    this.#closingReason = reason;
    this.#updateFlow();
    this.#whenIdle().then(
      () => {
        if (this.#state !== 'closing') return;
        this.#replies.flush();
        this.#socket.end();
        this.#close(reason);
      },
      () => undefined,
    );
  }

  #whenIdle(): Promise<void> {
    if (this.#flow.inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const previous = this.#onIdle;
      this.#onIdle = () => {
        previous?.();
        resolve();
      };
    });
  }

  /** A request waiting for memory will never be served: take it out of the budget's line. */
  #leaveMemoryLine(): void {
    this.#waitingRequest = null;
    this.#flow.cancelReservation();
  }

  #clearHandshakeTimer(): void {
    if (this.#handshakeTimer === null) return;
    clearTimeout(this.#handshakeTimer);
    this.#handshakeTimer = null;
  }

  /**
   * The one place a connection ends. Idempotent. The device closes after in-flight I/O, and
   * after a device open in progress (whose device is then closed unused).
   */
  #close(reason: string): void {
    if (this.#state === 'closed') return;
    const graceful = this.#state === 'closing';
    this.#leaveMemoryLine();
    this.#state = 'closed';
    this.#clearHandshakeTimer();
    this.#queue.clear();
    if (!graceful) this.#socket.destroy();
    else if (this.#socket.writableEnded) this.#socket.destroySoon();
    else this.#socket.end(() => this.#socket.destroy());
    this.#options.budget.unregister(this);
    void this.#whenIdle()
      .then(() => this.#opening)
      .then(() => this.#device?.close())
      .catch((err: unknown) => this.#log.warn(`${this.label}: closing device: ${String(err)}`))
      .finally(() => {
        // Every request has replied and the socket is gone: nothing is held any more.
        this.#flow.releaseAll();
        this.#options.events.connectionClosed(this.record, this.#closingReason ?? reason);
        this.#resolveClosed();
      });
  }
}

/** What a paused socket has read and buffered, but not yet given out as 'data'. */
function readBuffered(socket: Socket): Buffer[] {
  const chunks: Buffer[] = [];
  for (let chunk = socket.read() as Buffer | null; chunk !== null; chunk = socket.read() as Buffer | null) chunks.push(chunk);
  return chunks;
}
