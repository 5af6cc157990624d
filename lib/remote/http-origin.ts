// The HTTP(S) server a remote base image is read from (its "origin"), read by byte ranges.
//
// Opening it (probe) asks for the first byte: the 206 answer's Content-Range gives the size,
// and its ETag and Last-Modified say which version of the image this is. That identity is what
// overlays bind to and what keys the block cache (remote-base.ts), and every later request
// carries it as a precondition (If-Match on a strong ETag, else If-Unmodified-Since), so an
// image replaced on the server is never mixed with the old one: the server answers 412 and the
// read fails (ESTALE) instead of returning new bytes under old overlays.
//
// Each fetch is one GET with a Range header, answered 206 with exactly the asked range:
//   - a request that fails on the way (connection refused or reset, no complete answer within
//     the timeout, a short body, 429 or a 5xx status) is tried again, `retries` more times,
//     after 0.25 s, 0.5 s, 1 s, … (at most 4 s between tries);
//   - a kept-alive connection the server had closed meanwhile (reset as the request goes out on
//     it: nginx closes its connection after each 412, while saying keep-alive) is not a failure
//     of the origin: the request goes again at once on another connection, up to
//     ORIGIN_CONNECTIONS times, without using up a retry;
//   - any other answer (200 for a range, another range, another ETag, 404, 412, …) fails at once;
//   - at most ORIGIN_CONNECTIONS requests run at once; the others wait, and their timeout only
//     starts when they are sent;
//   - a fetch that must wait joins a waiting one it continues or precedes (up to
//     MAX_MERGED_BYTES together): one request brings both, and each caller gets its own bytes.
//     Many reads of one stream in flight (nbdcopy's 64, a kernel's read-ahead) then go to the
//     origin in large requests instead of as many small ones queued behind each other. A fetch
//     sent at once (a connection free) is never held back to wait for company;
//   - a body is read into the caller's buffer and never past it: a longer one fails the request;
//   - bodies come from a pool of buffers (lib/buffer-pool.ts): a caller done with what fetch()
//     gave gives it back with release(), and a joined request's buffer goes back once every
//     caller has. Fresh buffers cost a page fault per 4 KiB as the socket fills them: reusing
//     them made a cold nbdcopy of a 1 GiB image 18 % faster here (the same effect as telling
//     malloc to keep freed memory: 3.14-3.21 s against 3.70-4.02 s).
// Redirects are not followed: the answer names the status and asks for the final URL.

import { codedError } from '../block/coded-error.js';
import { BufferPool } from '../buffer-pool.js';
import { basicAuthorization, isNetworkFailure, RangeClient } from './range-client.js';
import { ORIGIN_CONNECTIONS } from './remote-options.js';
import { shownUrl } from './remote-url.js';
import type { SigningRequest } from './sigv4.js';

export interface OriginIdentity {
  /** Bytes of the image. */
  readonly size: number;
  /** The ETag the server gave, as given (quotes and W/ included), if any. */
  readonly etag?: string;
  /** The Last-Modified the server gave, if any. */
  readonly lastModified?: string;
}

export interface OriginOptions {
  readonly timeoutMs: number;
  readonly retries: number;
  /** What messages call the origin (default: the URL without user and password), e.g. s3://BUCKET/KEY. */
  readonly shown?: string;
  /** Headers that sign each request as it is sent (S3's SigV4, sigv4.ts). */
  readonly sign?: (request: SigningRequest) => Record<string, string>;
  /** Told of each failed try that will be tried again (for the log). */
  readonly onRetry?: (message: string) => void;
}

export interface OriginCounters {
  /** Range requests answered in full. */
  requests: number;
  /** Body bytes received in those answers. */
  bytes: number;
  /** Tries that failed and were tried again. */
  retries: number;
  /** Fetches that failed for good. */
  failures: number;
}

const FIRST_RETRY_DELAY_MS = 250;
const MAX_RETRY_DELAY_MS = 4000;
const USER_AGENT = 'nbd-cow';

/** A failure worth another try: the network, a timeout, a short body, 429, 5xx. */
function transient(err: Error): Error {
  return Object.assign(err, { transient: true });
}

function isTransient(err: unknown): boolean {
  return (err as { transient?: unknown } | null)?.transient === true;
}

/** TLS refusals (an untrusted or mismatched certificate, a failed handshake): trying again changes nothing. */
function isTlsRefusal(code: string): boolean {
  return /CERT|SSL|TLS|SIGNATURE|VERIFY/.test(code);
}

/** A reset on a kept-alive connection before any answer: the server had closed it. */
function isStaleConnection(err: unknown): boolean {
  return (err as { staleConnection?: unknown } | null)?.staleConnection === true;
}

/** `bytes FIRST-LAST/TOTAL` → the numbers, or undefined. */
export function parseContentRange(value: string | undefined): { first: number; last: number; total: number } | undefined {
  const match = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(value?.trim() ?? '');
  if (match === null) return undefined;
  const [first, last, total] = [Number(match[1]), Number(match[2]), Number(match[3])];
  if (![first, last, total].every(Number.isSafeInteger) || last < first || last >= total) return undefined;
  return { first, last, total };
}

/** The headers that make a request fail (412) if the image is no longer `identity`'s version. */
export function preconditionHeaders(identity: OriginIdentity): Record<string, string> {
  if (identity.etag !== undefined && !identity.etag.startsWith('W/')) return { 'If-Match': identity.etag };
  if (identity.lastModified !== undefined) return { 'If-Unmodified-Since': identity.lastModified };
  return {};
}

/** Most bytes of waiting fetches one request brings together. */
export const MAX_MERGED_BYTES = 4 * 1024 * 1024;

/** Counts requests in flight and makes the ones past `limit` wait, first come first served. */
class RequestSlots {
  readonly #limit: number;
  #busy = 0;
  readonly #waiting: Array<() => void> = [];

  constructor(limit: number) {
    this.#limit = limit;
  }

  /** Take a slot if one is free now. */
  tryTake(): boolean {
    if (this.#busy >= this.#limit) return false;
    this.#busy++;
    return true;
  }

  async take(): Promise<void> {
    if (this.tryTake()) return;
    await new Promise<void>((resolve) => this.#waiting.push(resolve));
  }

  give(): void {
    const next = this.#waiting.shift();
    if (next !== undefined) next();
    else this.#busy--;
  }
}

/** One caller's range within a batch. */
interface BatchMember {
  readonly offset: number;
  readonly length: number;
  readonly resolve: (body: Buffer) => void;
  readonly reject: (err: unknown) => void;
}

/** Adjacent fetches sent as one request: [offset, offset + length). */
interface Batch {
  offset: number;
  length: number;
  readonly members: BatchMember[];
}

interface Answer {
  readonly status: number;
  readonly headers: Readonly<Record<string, string>>;
  /** The body, exactly as long as asked for. */
  readonly body: Buffer;
}

export class HttpOrigin {
  readonly url: URL;
  /** What logs and messages show: the URL without user and password. */
  readonly shown: string;
  readonly identity: OriginIdentity;
  readonly counters: OriginCounters;
  readonly #options: OriginOptions;
  readonly #client: RangeClient;
  readonly #slots = new RequestSlots(ORIGIN_CONNECTIONS);
  /** Answers' bodies; at most 64 MiB kept free. */
  readonly #pool = new BufferPool(64 * 1024 * 1024, MAX_MERGED_BYTES);
  /** A buffer fetch() gave → the body it is part of, and how many of its callers still hold theirs. */
  readonly #lent = new WeakMap<Buffer, { readonly body: Buffer; holders: number }>();
  /** Batches waiting for their first connection, by where they start and where they end. */
  readonly #waitingByStart = new Map<number, Batch>();
  readonly #waitingByEnd = new Map<number, Batch>();
  #closed = false;

  private constructor(
    url: URL,
    identity: OriginIdentity,
    options: OriginOptions,
    client: RangeClient,
    counters: OriginCounters = { requests: 0, bytes: 0, retries: 0, failures: 0 },
  ) {
    this.url = url;
    this.counters = counters;
    this.shown = options.shown ?? shownUrl(url);
    this.identity = identity;
    this.#options = options;
    this.#client = client;
  }

  /** Ask for the first byte to learn the size and version; throws one line when the server cannot serve ranges. */
  static async probe(url: URL, options: OriginOptions): Promise<HttpOrigin> {
    const client = new RangeClient(url);
    const probing = new HttpOrigin(url, { size: 0 }, options, client);
    try {
      const answer = await probing.#withRetries('', () => probing.#send({ Range: 'bytes=0-0' }, 1, undefined));
      const range = parseContentRange(header(answer.headers, 'content-range'));
      if (range === undefined || range.first !== 0 || range.last !== 0) {
        throw codedError('EPROTO', `${probing.shown}: the answer to a range request has no usable Content-Range`);
      }
      const etag = header(answer.headers, 'etag');
      const lastModified = header(answer.headers, 'last-modified');
      if (etag === undefined && lastModified === undefined) {
        throw codedError(
          'EPROTO',
          `${probing.shown}: the server gives neither ETag nor Last-Modified, so a replaced image could not be told apart`,
        );
      }
      const identity: OriginIdentity = {
        size: range.total,
        ...(etag !== undefined ? { etag } : {}),
        ...(lastModified !== undefined ? { lastModified } : {}),
      };
      return new HttpOrigin(url, identity, options, client, probing.counters);
    } catch (err) {
      client.close();
      throw err;
    }
  }

  /**
   * The image's `length` bytes at `offset`: sent at once when a connection is free, else joined
   * to a waiting fetch it continues or precedes, or queued. The buffer is only allocated once the
   * request may be sent, so fetches waiting their turn hold no memory.
   */
  fetch(offset: number, length: number): Promise<Buffer> {
    if (length === 0) return Promise.resolve(Buffer.alloc(0));
    return new Promise<Buffer>((resolve, reject) => {
      const member: BatchMember = { offset, length, resolve, reject };
      if (this.#slots.tryTake()) {
        void this.#run({ offset, length, members: [member] }, true);
        return;
      }
      if (this.#join(member)) return;
      const batch: Batch = { offset, length, members: [member] };
      this.#waitingByStart.set(offset, batch);
      this.#waitingByEnd.set(offset + length, batch);
      void this.#run(batch, false);
    });
  }

  /** Add `member` to a waiting batch it continues or precedes, if one has room. */
  #join(member: BatchMember): boolean {
    const end = member.offset + member.length;
    const before = this.#waitingByEnd.get(member.offset);
    if (before !== undefined && before.length + member.length <= MAX_MERGED_BYTES) {
      this.#waitingByEnd.delete(member.offset);
      before.length += member.length;
      before.members.push(member);
      this.#waitingByEnd.set(end, before);
      return true;
    }
    const after = this.#waitingByStart.get(end);
    if (after !== undefined && after.length + member.length <= MAX_MERGED_BYTES) {
      this.#waitingByStart.delete(end);
      after.offset = member.offset;
      after.length += member.length;
      after.members.unshift(member);
      this.#waitingByStart.set(member.offset, after);
      return true;
    }
    return false;
  }

  /** Send `batch` (once it has a connection: `holding` says it has one already) and hand each member its bytes. */
  async #run(batch: Batch, holding: boolean): Promise<void> {
    let body: Buffer;
    // The slot taken for the first try, until that try has it (a retry waits for one again).
    let slotHeld = holding;
    try {
      if (!holding) {
        await this.#slots.take();
        slotHeld = true;
        // Sent now as it is: no longer open to others (an entry another batch with the same
        // start or end took over stays).
        if (this.#waitingByStart.get(batch.offset) === batch) this.#waitingByStart.delete(batch.offset);
        if (this.#waitingByEnd.get(batch.offset + batch.length) === batch) this.#waitingByEnd.delete(batch.offset + batch.length);
      }
      const { offset, length } = batch;
      const last = offset + length - 1;
      const headers = { Range: `bytes=${offset}-${last}`, ...preconditionHeaders(this.identity) };
      const answer = await this.#withRetries(`bytes ${offset}-${last}`, () => {
        const holds = slotHeld;
        slotHeld = false;
        return this.#send(headers, length, { first: offset, last }, holds);
      });
      body = answer.body;
    } catch (err) {
      for (const member of batch.members) member.reject(err);
      return;
    } finally {
      if (slotHeld) this.#slots.give(); // no try was made (closed meanwhile)
    }
    const lent = { body, holders: batch.members.length };
    for (const member of batch.members) {
      const from = member.offset - batch.offset;
      const part = batch.members.length === 1 ? body : body.subarray(from, from + member.length);
      this.#lent.set(part, lent);
      member.resolve(part);
    }
  }

  /**
   * Give back a buffer fetch() gave, once nothing reads it any more (nor will: the pool hands
   * it out again). Anything else, or a second release, is ignored.
   */
  release(buf: Buffer): void {
    const lent = this.#lent.get(buf);
    if (lent === undefined) return;
    this.#lent.delete(buf);
    if (--lent.holders === 0) this.#pool.release(lent.body);
  }

  /** Close the idle connections; requests in flight fail. */
  close(): void {
    this.#closed = true;
    this.#client.close();
  }

  /** The URL, then what was asked of it when it is not the probe ("bytes 0-9"). */
  #about(what: string): string {
    return what === '' ? this.shown : `${this.shown} ${what}`;
  }

  async #withRetries(what: string, attempt: () => Promise<Answer>): Promise<Answer> {
    let staleConnections = 0;
    for (let tried = 0; ; tried++) {
      if (this.#closed) throw codedError('ESHUTDOWN', `${this.shown}: closed`);
      try {
        const answer = await attempt();
        this.counters.requests++;
        this.counters.bytes += answer.body.length;
        return answer;
      } catch (err) {
        if (isStaleConnection(err) && staleConnections++ < ORIGIN_CONNECTIONS) {
          tried--;
          continue;
        }
        const message = err instanceof Error ? err.message : String(err);
        if (!isTransient(err) || tried >= this.#options.retries) {
          this.counters.failures++;
          const tries = tried === 0 ? '' : ` (after ${tried + 1} tries)`;
          const code = (err as NodeJS.ErrnoException).code ?? 'EIO';
          throw codedError(code, `${this.#about(what)}: ${message}${tries}`);
        }
        this.counters.retries++;
        const delay = Math.min(MAX_RETRY_DELAY_MS, FIRST_RETRY_DELAY_MS * 2 ** tried);
        this.#options.onRetry?.(`${this.#about(what)}: ${message}; trying again in ${delay / 1000} s`);
        await new Promise((resolve) => setTimeout(resolve, delay));
      }
    }
  }

  /**
   * One request once a connection is free (`holding`: the caller has taken its slot): the
   * answer's status and headers checked, its body read into a new buffer of `length` bytes.
   */
  async #send(
    headers: Record<string, string>,
    length: number,
    expect: { first: number; last: number } | undefined,
    holding = false,
  ): Promise<Answer> {
    if (!holding) await this.#slots.take();
    try {
      // A failed try's buffer is left to the garbage collector: its connection was given up,
      // but nothing here proves no write into it is still on the way.
      return await this.#request(headers, this.#pool.acquire(length), expect);
    } finally {
      this.#slots.give();
    }
  }

  async #request(
    headers: Record<string, string>,
    dest: Buffer,
    expect: { first: number; last: number } | undefined,
  ): Promise<Answer> {
    const sent = { ...headers, 'User-Agent': USER_AGENT, 'Accept-Encoding': 'identity', ...basicAuthorization(this.url) };
    const signature = this.#options.sign?.({ method: 'GET', url: this.url, headers: sent }) ?? {};
    const check = (status: number, answered: Readonly<Record<string, string>>): Error | undefined =>
      this.#checkAnswer(status, answered, dest.length, expect);
    try {
      return await this.#client.request({ ...sent, ...signature }, dest, check, this.#options.timeoutMs);
    } catch (err) {
      if (!isNetworkFailure(err)) throw err; // refused by the checks, or a broken answer: as it is
      const code = err.code ?? 'EIO';
      if (isTlsRefusal(code)) {
        const hint = /CERT|VERIFY|SIGNATURE/.test(code) ? ' (NODE_EXTRA_CA_CERTS=FILE adds a CA to trust)' : '';
        throw codedError(code, `${err.message}${hint}`);
      }
      const failure = transient(codedError(code, err.message));
      throw err.staleConnection === true ? Object.assign(failure, { staleConnection: true }) : failure;
    }
  }

  /** Why an answer cannot be used (transient when worth another try), or undefined. */
  #checkAnswer(
    status: number,
    headers: Readonly<Record<string, string>>,
    length: number,
    expect: { first: number; last: number } | undefined,
  ): Error | undefined {
    if (status === 429 || status >= 500) return transient(codedError('EIO', `the server answered ${status}`));
    if (status === 412) {
      return codedError('ESTALE', 'the image on the server changed since it was opened: restart to serve the new one');
    }
    if (status === 200 && header(headers, 'content-length') === '0') return codedError('EINVAL', 'the image is empty');
    if (status === 200) return codedError('EPROTO', 'the server ignores range requests (it answered 200, not 206)');
    if (status >= 300 && status < 400) {
      return codedError('EPROTO', `the server answered ${status} (a redirect): give the final URL`);
    }
    if (status !== 206) return codedError(status === 404 ? 'ENOENT' : 'EIO', `the server answered ${status}`);
    const range = parseContentRange(header(headers, 'content-range'));
    const contentLength = header(headers, 'content-length');
    if (range === undefined) return codedError('EPROTO', 'a 206 answer without a usable Content-Range');
    if (expect !== undefined) {
      if (range.first !== expect.first || range.last !== expect.last || range.total !== this.identity.size) {
        return codedError(
          'EPROTO',
          `the server sent bytes ${range.first}-${range.last}/${range.total} for bytes ${expect.first}-${expect.last}/${this.identity.size}`,
        );
      }
      const etag = header(headers, 'etag');
      if (etag !== undefined && this.identity.etag !== undefined && etag !== this.identity.etag) {
        return codedError(
          'ESTALE',
          `the image on the server changed since it was opened (ETag ${this.identity.etag} is now ${etag})`,
        );
      }
    }
    if (contentLength !== undefined && Number(contentLength) !== length) {
      return codedError('EPROTO', `a ${contentLength}-byte answer for ${length} bytes`);
    }
    return undefined;
  }
}

function header(headers: Readonly<Record<string, string>>, name: string): string | undefined {
  return headers[name];
}
