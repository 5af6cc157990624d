// One client connection: a state machine over received bytes
//   client-flags → option-header ⇄ option-data [⇄ opening] → request-header ⇄ write-payload | discard-payload
// ending in closing (DISC or shutdown: finish in-flight requests, then end) or closed.
// opening: GO or EXPORT_NAME is opening the device (negotiation.ts). The socket is paused and
// nothing is parsed until the open settles; bytes the client pipelined after the option stay
// queued and are parsed then, under the outcome (transmission, or the GO's error reply), and a
// FIN that came meanwhile is acted on after them. If the connection closes during the open
// (reset, shutdown), the device that arrives late is closed unused; `closed` waits for that.
// Requests run concurrently; each reply is written as soon as it is ready (matched by cookie),
// and every reply finished in one event-loop turn leaves in one writev (reply-batcher.ts).
// Back-pressure: at the in-flight cap, or when too many bytes wait in the socket's write
// buffer, the socket is paused and parsing stops until there is room again.

import type { Socket } from 'node:net';
import type { BlockDevice } from '../block/device.js';
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
import { ProtocolError } from '../protocol/errors.js';
import {
  CLIENT_FLAGS_SIZE,
  decodeClientFlags,
  decodeOptionHeader,
  encodeGreeting,
  OPTION_HEADER_SIZE,
  type OptionHeader,
} from '../protocol/handshake.js';
import { decodeRequest, REQUEST_SIZE, type Request } from '../protocol/transmission.js';
import { type BufferPool, POOL_MIN_BYTES } from './buffer-pool.js';
import { ByteQueue } from './byte-queue.js';
import type { ExportRegistry } from './exports.js';
import { handleOption, type NegotiationState, type SettledOutcome } from './negotiation.js';
import { ReplyBatcher } from './reply-batcher.js';
import { errorReply, type Payload, type Session, serveRequest, validateRequest } from './requests.js';

type State =
  | 'client-flags'
  | 'option-header'
  | 'option-data'
  | 'opening'
  | 'request-header'
  | 'write-payload'
  | 'discard-payload'
  | 'closing'
  | 'closed';

export interface ConnectionLimits {
  /** Requests in flight before the socket is paused (the Linux client sends up to 128). */
  readonly maxInFlight: number;
  /** Payload bytes held by in-flight requests before the socket is paused. */
  readonly maxInFlightBytes: number;
  /** Reply bytes queued in the socket before parsing pauses until 'drain'. */
  readonly maxQueuedReplyBytes: number;
  /** Largest option payload accepted; a bigger one is treated as an attack and closes. */
  readonly maxOptionLength: number;
  /** Options allowed before an export is chosen. */
  readonly maxOptions: number;
}

export const DEFAULT_LIMITS: ConnectionLimits = {
  maxInFlight: 128,
  maxInFlightBytes: 64 * 1024 * 1024,
  maxQueuedReplyBytes: 16 * 1024 * 1024,
  maxOptionLength: 64 * 1024,
  maxOptions: 256,
};

export interface ConnectionOptions {
  readonly registry: ExportRegistry;
  readonly log: Logger;
  readonly limits: ConnectionLimits;
  /** A short label for log lines, e.g. the peer address. */
  readonly label: string;
  /** Large READ reply buffers come from here and go back once written. */
  readonly buffers: BufferPool;
}

export class Connection {
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
  #negotiation: NegotiationState = { structuredReplies: false, metaContexts: null, noZeroes: false };
  #session: Session | null = null;
  /** The connection's device, from the end of a successful open; closed by #close. */
  #device: BlockDevice | null = null;
  /** The device open started by GO / EXPORT_NAME, until its outcome is handled. */
  #opening: Promise<void> | null = null;
  /** The outcome of that open, waiting for the 'opening' step to apply it. */
  #opened: SettledOutcome | null = null;
  /** The client's FIN arrived during the open, after everything it sent. */
  #endedWhileOpening = false;
  #pendingWrite: Request | null = null;
  #allocate: (length: number) => Buffer;
  #discardRemaining = 0;
  #inFlight = 0;
  #inFlightBytes = 0;
  #waitingDrain = false;
  #paused = false;
  #shuttingDown = false;
  #resolveClosed: () => void = () => undefined;
  #onIdle: (() => void) | null = null;

  constructor(socket: Socket, options: ConnectionOptions) {
    this.#socket = socket;
    this.#replies = new ReplyBatcher(socket, options.buffers);
    this.#options = options;
    this.#log = options.log;
    this.label = options.label;
    this.#allocate = (length) => options.buffers.acquire(length);
    this.closed = new Promise((resolve) => {
      this.#resolveClosed = resolve;
    });
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => {
      this.#queue.push(chunk);
      this.#process();
    });
    socket.on('drain', () => {
      this.#waitingDrain = false;
      this.#process();
    });
    // The server socket allows half-open connections: a client may send DISC and then FIN,
    // and still gets the replies to its in-flight requests (proto.md: the server MUST handle
    // all outstanding requests).
    socket.on('end', () => {
      if (this.#state === 'opening') this.#endedWhileOpening = true;
      else if (this.#session !== null && this.#inFlight > 0) this.#beginClosing('client closed its side');
      else this.#close('client closed the connection');
    });
    socket.on('error', (err) => this.#close(`socket error: ${err.message}`));
    socket.on('close', () => this.#close('socket closed'));
    socket.write(encodeGreeting(NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES));
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
        return this.#onClientFlags(decodeClientFlags(queue.take(CLIENT_FLAGS_SIZE)));
      case 'option-header':
        if (queue.length < OPTION_HEADER_SIZE) return false;
        return this.#onOptionHeader(decodeOptionHeader(queue.take(OPTION_HEADER_SIZE)));
      case 'option-data':
        if (queue.length < this.#option.length) return false;
        return this.#onOption(queue.take(this.#option.length));
      case 'opening': {
        const opened = this.#opened;
        if (opened === null) return false;
        this.#opened = null;
        return this.#onOutcome(opened);
      }
      case 'request-header':
        if (this.#mustWait() || queue.length < REQUEST_SIZE) return false;
        return this.#onRequest(decodeRequest(queue.take(REQUEST_SIZE)));
      case 'write-payload': {
        const req = this.#pendingWrite as Request; // set whenever the state is write-payload
        if (queue.length < req.length) return false;
        this.#pendingWrite = null;
        this.#state = 'request-header';
        // A large payload stays in the pieces it arrived in: the overlay takes them as they are
        // (pwritev), which saves copying every byte once more on the event loop.
        this.#dispatch(req, req.length >= POOL_MIN_BYTES ? queue.takeChunks(req.length) : queue.take(req.length));
        return true;
      }
      case 'discard-payload':
        this.#discardRemaining -= queue.skip(this.#discardRemaining);
        if (this.#discardRemaining > 0) return false;
        this.#state = 'request-header';
        return true;
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
    this.#writeAll(outcome.replies);
    switch (outcome.kind) {
      case 'continue':
        this.#state = 'option-header';
        return true;
      case 'close':
        this.#log.debug(`${this.label}: ${outcome.reason}`);
        this.#beginClosing(outcome.reason);
        return false;
      case 'transmission':
        this.#device = outcome.device;
        this.#session = {
          device: outcome.device,
          structuredReplies: this.#negotiation.structuredReplies,
          contexts: outcome.contexts,
          log: this.#log,
          allocate: this.#allocate,
        };
        this.#log.debug(`${this.label}: serving export "${outcome.exp.name}" flags 0x${outcome.flags.toString(16)}`);
        this.#state = 'request-header';
        return true;
    }
  }

  #onRequest(req: Request): boolean {
    const session = this.#session as Session; // request-header is only reached with a session
    if (req.type === NBD_CMD_DISC) {
      this.#beginClosing('client sent NBD_CMD_DISC');
      return false;
    }
    if (req.type !== NBD_CMD_WRITE || req.length === 0) {
      this.#dispatch(req, undefined);
      return true;
    }
    if (req.length <= MAX_PAYLOAD) {
      // Even a write that will be refused has its payload read, so framing survives.
      this.#pendingWrite = req;
      this.#state = 'write-payload';
      return true;
    }
    // Too big to buffer: answer now and stream the payload away without keeping it.
    const invalid = validateRequest(req, session);
    if (invalid !== null) this.#writeAll(errorReply(req, invalid, session));
    this.#discardRemaining = req.length;
    this.#state = 'discard-payload';
    return true;
  }

  #dispatch(req: Request, payload: Payload | undefined): void {
    const session = this.#session as Session; // requests are only dispatched with a session
    const cost = req.type === NBD_CMD_READ || req.type === NBD_CMD_WRITE ? req.length : 0;
    this.#inFlight++;
    this.#inFlightBytes += cost;
    serveRequest(req, payload, session).then(
      (reply) => this.#finish(cost, reply),
      (err: unknown) => {
        this.#log.error(`${this.label}: request failed unexpectedly: ${String(err)}`);
        this.#finish(cost, null);
        this.#close('internal error');
      },
    );
  }

  #finish(cost: number, reply: Buffer[] | null): void {
    this.#inFlight--;
    this.#inFlightBytes -= cost;
    if (reply !== null) this.#writeAll(reply);
    if (this.#inFlight === 0 && this.#onIdle !== null) {
      const onIdle = this.#onIdle;
      this.#onIdle = null;
      onIdle();
    }
    if (this.#state === 'request-header' || this.#state === 'write-payload') this.#process();
  }

  #mustWait(): boolean {
    const limits = this.#options.limits;
    return this.#inFlight >= limits.maxInFlight || this.#inFlightBytes >= limits.maxInFlightBytes || this.#waitingDrain;
  }

  /** Pause the socket while parsing must wait; resume when it may go on. */
  #updateFlow(): void {
    if (this.#state === 'closed') return;
    const wait = this.#state === 'closing' || this.#state === 'opening' || (this.#state === 'request-header' && this.#mustWait());
    if (wait && !this.#paused) {
      this.#paused = true;
      this.#socket.pause();
    } else if (!wait && this.#paused) {
      this.#paused = false;
      this.#socket.resume();
    }
  }

  /** Send replies (each message whole, batched per event: reply-batcher.ts). */
  #writeAll(messages: readonly Buffer[]): void {
    if (this.#state === 'closed' || messages.length === 0) return;
    if (this.#replies.write(messages) > this.#options.limits.maxQueuedReplyBytes) this.#waitingDrain = true;
  }

  /** Stop reading; once every in-flight request has replied, end the socket. */
  #beginClosing(reason: string): void {
    if (this.#state === 'closing' || this.#state === 'closed') return;
    this.#state = 'closing';
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
    if (this.#inFlight === 0) return Promise.resolve();
    return new Promise((resolve) => {
      const previous = this.#onIdle;
      this.#onIdle = () => {
        previous?.();
        resolve();
      };
    });
  }

  /**
   * The one place a connection ends. Idempotent. The device closes after in-flight I/O, and
   * after a device open in progress (whose device is then closed unused).
   */
  #close(reason: string): void {
    if (this.#state === 'closed') return;
    const graceful = this.#state === 'closing';
    this.#state = 'closed';
    this.#queue.clear();
    this.#log.debug(`${this.label}: closed (${reason})`);
    if (!graceful) this.#socket.destroy();
    else if (this.#socket.writableEnded) this.#socket.destroySoon();
    else this.#socket.end(() => this.#socket.destroy());
    void this.#whenIdle()
      .then(() => this.#opening)
      .then(() => this.#device?.close())
      .catch((err: unknown) => this.#log.warn(`${this.label}: closing device: ${String(err)}`))
      .finally(() => this.#resolveClosed());
  }
}
