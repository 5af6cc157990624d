// The HTTP/1.1 client of a remote base's range requests: kept-alive connections that read each
// answer's body straight into the caller's buffer (net.Socket's `onread`), with no stream, no
// chunk buffers and no copy between the socket and the block. Measured on this 2-core VM against
// Node's http client (nginx on loopback, 256 MiB in 256 KiB ranges, 8 connections): 0.5 CPU-s
// against 1.0, and 0.5 s of wall time against 0.8-1.0. http-origin.ts decides what to ask and what an answer means;
// this file only moves bytes and says how a request failed:
//
//   - the answer's head (status line and headers, at most HEAD_LIMIT bytes) is read into a
//     buffer of the connection's, the body into the caller's; a body longer than asked fails;
//   - a body's end is its Content-Length, else the connection's close; a chunked answer is read
//     only for an error's text (a range answer must say its length, as every server sends it);
//   - an answer that is not a success (or the caller refuses it) has at most ERROR_BODY_BYTES of
//     its body read, for the error's text, and its connection closed;
//   - a connection goes back to the pool after a complete answer unless either side said
//     `Connection: close` or the answer was HTTP/1.0;
//   - errors carry the socket's code; a reset or close of a reused connection before any byte of
//     the answer is marked `staleConnection` (the server had closed it while it was idle).

import net from 'node:net';
import tls from 'node:tls';
import { codedError } from '../block/coded-error.js';

/** Most bytes of an answer's status line and headers. */
export const HEAD_LIMIT = 16 * 1024;
/** Most bytes of an error answer kept for its text. */
export const ERROR_BODY_BYTES = 4096;
/** How long a refused answer's body is waited for when it has not all come with its head. */
const ERROR_BODY_WAIT_MS = 250;

export interface RangeAnswer {
  readonly status: number;
  /** Header names in lower case; a repeated header keeps its first value. */
  readonly headers: Readonly<Record<string, string>>;
  /** The caller's buffer, filled. */
  readonly body: Buffer;
}

/** Whether a status and its headers can be read into the caller's buffer: undefined if so, else why not. */
export type AnswerCheck = (status: number, headers: Readonly<Record<string, string>>) => Error | undefined;

/** Status line and headers → status, version and headers; undefined when malformed. */
export function parseHead(text: string): { status: number; http10: boolean; headers: Record<string, string> } | undefined {
  const lines = text.split('\r\n');
  const match = /^HTTP\/1\.([01]) (\d{3})(?: .*)?$/.exec(lines[0] ?? '');
  if (match === null) return undefined;
  const headers: Record<string, string> = {};
  for (const line of lines.slice(1)) {
    if (line === '') continue;
    const colon = line.indexOf(':');
    if (colon <= 0) return undefined;
    const name = line.slice(0, colon).trim().toLowerCase();
    if (!(name in headers)) headers[name] = line.slice(colon + 1).trim();
  }
  return { status: Number(match[2]), http10: match[1] === '0', headers };
}

/** The request's text; refuses a header value that would break the request apart. */
export function requestText(url: URL, headers: Readonly<Record<string, string>>): string {
  let text = `GET ${url.pathname}${url.search} HTTP/1.1\r\nHost: ${url.host}\r\n`;
  for (const [name, value] of Object.entries(headers)) {
    if (/[\r\n]/.test(name) || /[\r\n]/.test(value))
      throw codedError('EINVAL', `header ${JSON.stringify(name)} holds a line break`);
    text += `${name}: ${value}\r\n`;
  }
  return `${text}\r\n`;
}

/** Basic authentication from the URL's user and password, as Node's http client sends it. */
export function basicAuthorization(url: URL): Record<string, string> {
  if (url.username === '' && url.password === '') return {};
  const credentials = `${decodeURIComponent(url.username)}:${decodeURIComponent(url.password)}`;
  return { Authorization: `Basic ${Buffer.from(credentials, 'utf8').toString('base64')}` };
}

/** A failure of the connection (refused, reset, closed early, timed out, TLS), not of the answer. */
export function isNetworkFailure(err: unknown): err is NodeJS.ErrnoException & { staleConnection?: boolean } {
  return (err as { network?: unknown } | null)?.network === true;
}

interface Pending {
  readonly dest: Buffer;
  readonly check: AnswerCheck;
  readonly resolve: (answer: RangeAnswer) => void;
  readonly reject: (err: Error) => void;
}

/** One kept-alive connection to the origin, one request at a time. */
class RangeConnection {
  readonly #socket: net.Socket;
  /** Where every read that is not a body's lands; copied from at once (see #readInto). */
  readonly #scratch = Buffer.allocUnsafe(HEAD_LIMIT);
  /** The answer's head so far; then, for a refused answer, its body's first bytes. */
  readonly #head = Buffer.allocUnsafe(HEAD_LIMIT);
  readonly #onIdleEnd: (c: RangeConnection) => void;
  #pending: Pending | undefined;
  #used = false;
  #headBytes = 0;
  /** Set once the head is read. */
  #answer: { status: number; headers: Record<string, string>; keepAlive: boolean; length: number | undefined } | undefined;
  #received = 0;
  /** Why the answer was refused, while its body's first bytes are read into #head for the error's text. */
  #error: Error | undefined;
  #errorBytes = 0;
  /** Bytes of a refused answer's body seen (kept or not), and the last 5 of them. */
  #errorSeen = 0;
  #errorTail = '';
  #errorTimer: NodeJS.Timeout | undefined;
  #closed = false;
  /** Whether #readInto() pointed the last read at the caller's buffer. */
  #bodyRead = false;

  constructor(url: URL, onIdleEnd: (c: RangeConnection) => void) {
    this.#onIdleEnd = onIdleEnd;
    const https = url.protocol === 'https:';
    const host = url.hostname.replace(/^\[(.*)\]$/, '$1');
    const port = Number(url.port) || (https ? 443 : 80);
    const onread = { buffer: () => this.#readInto(), callback: (n: number) => this.#onRead(n) };
    this.#socket = https
      ? // tls.connect takes onread as net.connect does (Node's documentation); @types/node leaves it out.
        tls.connect({
          host,
          port,
          ...(net.isIP(host) === 0 ? { servername: host } : {}),
          ALPNProtocols: ['http/1.1'],
          onread,
        } as tls.ConnectionOptions)
      : net.connect({ host, port, onread });
    this.#socket.setNoDelay(true);
    this.#socket.on('error', (err: NodeJS.ErrnoException) => this.#fail(err, err.code ?? 'EIO'));
    this.#socket.on('close', () => this.#onClose());
  }

  get closed(): boolean {
    return this.#closed;
  }

  send(text: string, dest: Buffer, check: AnswerCheck): Promise<RangeAnswer> {
    return new Promise<RangeAnswer>((resolve, reject) => {
      this.#pending = { dest, check, resolve, reject };
      this.#headBytes = 0;
      this.#answer = undefined;
      this.#received = 0;
      this.#error = undefined;
      this.#errorBytes = 0;
      this.#errorSeen = 0;
      this.#errorTail = '';
      this.#socket.write(text);
    });
  }

  /** Mark reused for its next request (a reset before the answer then means the server had closed it). */
  reuse(): void {
    this.#used = true;
  }

  destroy(): void {
    this.#closed = true;
    clearTimeout(this.#errorTimer);
    this.#socket.destroy();
  }

  /**
   * Where the next socket read lands: the rest of the caller's buffer while reading its body,
   * else the scratch buffer. Node asks right after each read's callback, so the answer could be
   * settled and the next request sent before the read comes: only a body's place depends on the
   * request, and a body is read only while its request is pending.
   */
  #readInto(): Uint8Array {
    const p = this.#pending;
    if (p !== undefined && this.#answer !== undefined && this.#error === undefined && this.#received < p.dest.length) {
      this.#bodyRead = true;
      return p.dest.subarray(this.#received);
    }
    this.#bodyRead = false;
    return this.#scratch;
  }

  #onRead(n: number): boolean {
    const p = this.#pending;
    if (p === undefined) {
      // Bytes while idle: the server broke the protocol; the connection cannot be trusted.
      this.destroy();
      return false;
    }
    if (this.#bodyRead) {
      this.#received += n;
      this.#bodyProgress();
      return true;
    }
    const bytes = this.#scratch.subarray(0, n);
    if (this.#error !== undefined) {
      this.#keepErrorBody(bytes);
      return true;
    }
    if (this.#answer === undefined) {
      this.#headBytes += bytes.copy(this.#head, this.#headBytes); // stops at HEAD_LIMIT: #parseHead refuses it
      this.#parseHead();
      return true;
    }
    // Past the end of the asked range, the body went on.
    this.#fail(codedError('EPROTO', `the answer is longer than the ${p.dest.length} bytes asked for`), 'EPROTO', true);
    return false;
  }

  #parseHead(): void {
    const p = this.#pending as Pending;
    const end = this.#head.subarray(0, this.#headBytes).indexOf('\r\n\r\n');
    if (end < 0) {
      if (this.#headBytes >= HEAD_LIMIT)
        this.#fail(codedError('EPROTO', `an answer head over ${HEAD_LIMIT} bytes`), 'EPROTO', true);
      return;
    }
    const head = parseHead(this.#head.toString('latin1', 0, end));
    if (head === undefined) {
      this.#fail(codedError('EPROTO', 'a malformed HTTP answer'), 'EPROTO', true);
      return;
    }
    const { status, headers } = head;
    const lengthText = headers['content-length'];
    const chunked = /chunked/i.test(headers['transfer-encoding'] ?? '');
    const length = lengthText !== undefined && /^\d+$/.test(lengthText) ? Number(lengthText) : undefined;
    const keepAlive = !head.http10 && !/close/i.test(headers['connection'] ?? '') && (length !== undefined || chunked);
    this.#answer = { status, headers, keepAlive, length: chunked ? undefined : length };
    const early = this.#head.subarray(end + 4, this.#headBytes);
    const refused =
      p.check(status, headers) ??
      (chunked ? codedError('EPROTO', 'a chunked answer to a range request (no Content-Length)') : undefined);
    if (refused !== undefined) {
      // Keep what came of the body for the error's text; read a little more, then close.
      this.#error = refused;
      // Move what came of the body to the front of #head, where the error's text is kept.
      const kept = Buffer.from(early);
      this.#keepErrorBody(kept);
      // A body that does not say where it ends (or never comes) is not waited for long.
      if (this.#pending !== undefined) this.#errorTimer = setTimeout(() => this.#finishError(), ERROR_BODY_WAIT_MS);
      return;
    }
    if (early.length > p.dest.length) {
      this.#fail(codedError('EPROTO', `the answer is longer than the ${p.dest.length} bytes asked for`), 'EPROTO', true);
      return;
    }
    early.copy(p.dest, 0);
    this.#received = early.length;
    this.#bodyProgress();
  }

  #bodyProgress(): void {
    const p = this.#pending as Pending;
    const a = this.#answer;
    if (a === undefined || this.#received < p.dest.length) return;
    this.#pending = undefined;
    if (!a.keepAlive) this.destroy();
    p.resolve({ status: a.status, headers: a.headers, body: p.dest });
  }

  /** Keep the first ERROR_BODY_BYTES of a refused answer's body; settle it once all has come or enough is kept. */
  #keepErrorBody(bytes: Buffer): void {
    this.#errorBytes += bytes.copy(this.#head, this.#errorBytes, 0, Math.max(0, ERROR_BODY_BYTES - this.#errorBytes));
    this.#errorSeen += bytes.length;
    this.#errorTail = `${this.#errorTail}${bytes.toString('latin1', Math.max(0, bytes.length - 5))}`.slice(-5);
    if (this.#errorBytes >= ERROR_BODY_BYTES || this.#errorBodyDone()) this.#finishError();
  }

  /** Whether a refused answer's body has all come: its Content-Length, or a chunked body's last chunk. */
  #errorBodyDone(): boolean {
    const length = this.#answer?.length;
    if (length !== undefined) return this.#errorSeen >= length;
    return this.#errorTail === '0\r\n\r\n';
  }

  /** Settle an answer refused by its check, with its `<Code>` when it has one, and close. */
  #finishError(): void {
    const p = this.#pending;
    const err = this.#error;
    clearTimeout(this.#errorTimer);
    if (p === undefined || err === undefined) return;
    this.#pending = undefined;
    const text = this.#head.toString('utf8', 0, Math.min(this.#errorBytes, ERROR_BODY_BYTES));
    const code = /<Code>([A-Za-z0-9.]{1,64})<\/Code>/.exec(text)?.[1];
    if (code !== undefined && (this.#answer?.status ?? 0) >= 400) err.message = `${err.message} (${code})`;
    this.destroy();
    p.reject(err);
  }

  #fail(err: Error, code: string, protocol = false): void {
    const p = this.#pending;
    this.destroy();
    if (p === undefined) return;
    this.#pending = undefined;
    const answered = this.#answer !== undefined || this.#headBytes > 0;
    p.reject(
      protocol
        ? Object.assign(err, { code })
        : Object.assign(err, {
            code,
            network: true,
            staleConnection: this.#used && !answered && (code === 'ECONNRESET' || code === 'EPIPE'),
          }),
    );
  }

  #onClose(): void {
    this.#closed = true;
    if (this.#pending === undefined) {
      this.#onIdleEnd(this);
      return;
    }
    if (this.#error !== undefined) {
      this.#finishError();
      return;
    }
    const a = this.#answer;
    if (a !== undefined && a.length === undefined && !a.keepAlive && this.#received === this.#pending.dest.length) {
      this.#bodyProgress();
      return;
    }
    const what =
      a === undefined
        ? 'the connection closed before an answer'
        : `the answer broke off after ${this.#received} of ${this.#pending.dest.length} bytes`;
    this.#fail(codedError('ECONNRESET', what), a === undefined ? 'ECONNRESET' : 'EIO');
  }
}

/** Kept-alive connections to one origin; the caller limits how many requests run at once. */
export class RangeClient {
  readonly #url: URL;
  readonly #idle: RangeConnection[] = [];
  readonly #busy = new Set<RangeConnection>();
  #closed = false;

  constructor(url: URL) {
    this.#url = url;
  }

  /**
   * GET with `headers`, the body into `dest` (exactly its length), once `check` accepts the
   * answer's status and headers. Fails after `timeoutMs` with ETIMEDOUT (the connection closed).
   */
  async request(
    headers: Readonly<Record<string, string>>,
    dest: Buffer,
    check: AnswerCheck,
    timeoutMs: number,
  ): Promise<RangeAnswer> {
    if (this.#closed) throw codedError('ESHUTDOWN', 'closed');
    const text = requestText(this.#url, headers);
    const connection = this.#take();
    this.#busy.add(connection);
    let timer: NodeJS.Timeout | undefined;
    try {
      return await Promise.race([
        connection.send(text, dest, check),
        new Promise<never>((_, reject) => {
          timer = setTimeout(() => {
            connection.destroy();
            reject(Object.assign(codedError('ETIMEDOUT', `no complete answer within ${timeoutMs / 1000} s`), { network: true }));
          }, timeoutMs);
        }),
      ]);
    } finally {
      clearTimeout(timer);
      this.#busy.delete(connection);
      if (!connection.closed && !this.#closed) {
        connection.reuse();
        this.#idle.push(connection);
      } else connection.destroy();
    }
  }

  /** Close every connection; requests in flight fail. */
  close(): void {
    this.#closed = true;
    for (const c of [...this.#idle, ...this.#busy]) c.destroy();
    this.#idle.length = 0;
    this.#busy.clear();
  }

  #take(): RangeConnection {
    for (let c = this.#idle.pop(); c !== undefined; c = this.#idle.pop()) if (!c.closed) return c;
    return new RangeConnection(this.#url, (c) => {
      const at = this.#idle.indexOf(c);
      if (at >= 0) this.#idle.splice(at, 1);
    });
  }
}
