// A raw NBD socket client: sends hand-made bytes and reads exact byte counts (every read bounded
// by a timeout, so a hang fails instead of blocking), and notices when the server closes.

import { connect, type Socket } from 'node:net';
import type { ListenAddress } from '../../../lib/server/listener.js';
import { DEFAULT_TIMEOUT, TimeoutError } from '../wait.js';

function ignore(): void {
  /* see the constructor */
}

interface Waiter {
  readonly n: number;
  readonly resolve: (buf: Buffer) => void;
  readonly reject: (err: Error) => void;
  readonly timer: NodeJS.Timeout;
}

/** A raw client: exact reads with timeouts, writes of hand-made bytes, close detection. */
export class RawClient {
  readonly socket: Socket;
  #chunks: Buffer[] = [];
  #length = 0;
  #waiter: Waiter | null = null;
  #ended = false;
  #closedPromise: Promise<void>;

  private constructor(socket: Socket) {
    this.socket = socket;
    let resolveClosed: () => void = () => undefined;
    this.#closedPromise = new Promise((resolve) => {
      resolveClosed = resolve;
    });
    this.#onGone = (): void => {
      if (this.#ended) return;
      this.#ended = true;
      resolveClosed();
      this.#serve();
    };
    socket.on('data', this.#onData);
    socket.on('end', this.#onGone);
    socket.on('close', this.#onGone);
    // A reset from the server is a form of closing; the tests look at `closed`, not at errors.
    socket.on('error', ignore);
  }

  readonly #onData = (chunk: Buffer): void => {
    this.#chunks.push(chunk);
    this.#length += chunk.length;
    this.#serve();
  };

  readonly #onGone: () => void;

  /** A raw client over a socket that is already connected (a TLS socket after STARTTLS). */
  static over(socket: Socket): RawClient {
    return new RawClient(socket);
  }

  /** Stop listening to the socket and hand it over (to a TLS client after STARTTLS's ACK). */
  release(): Socket {
    if (this.#length > 0) throw new Error(`${this.#length} bytes still buffered`);
    this.socket.off('data', this.#onData);
    this.socket.off('end', this.#onGone);
    this.socket.off('close', this.#onGone);
    this.socket.off('error', ignore);
    return this.socket;
  }

  /** Connect to a listener; `allowHalfOpen` keeps our side writable after the server's FIN. */
  static connect(address: ListenAddress, options: { allowHalfOpen?: boolean; timeout?: number } = {}): Promise<RawClient> {
    const timeout = options.timeout ?? DEFAULT_TIMEOUT;
    if (address.kind === 'inherited') return Promise.reject(new Error(`inherited fd ${address.fd}: address unknown`));
    return new Promise((resolve, reject) => {
      const socket =
        address.kind === 'tcp'
          ? connect({ host: address.host, port: address.port, allowHalfOpen: options.allowHalfOpen ?? false })
          : connect({ path: address.path, allowHalfOpen: options.allowHalfOpen ?? false });
      socket.setNoDelay(true);
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new TimeoutError(`connect timed out after ${timeout} ms`));
      }, timeout);
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
      socket.once('connect', () => {
        clearTimeout(timer);
        resolve(new RawClient(socket));
      });
    });
  }

  /** Bytes received and not read yet. */
  get buffered(): number {
    return this.#length;
  }

  /** Whether the server closed (FIN or reset) the connection. */
  get isClosed(): boolean {
    return this.#ended;
  }

  write(...bufs: Buffer[]): void {
    for (const buf of bufs) this.socket.write(buf);
  }

  /** Exactly `n` bytes; rejects on timeout or if the connection closes first. */
  read(n: number, timeout = DEFAULT_TIMEOUT): Promise<Buffer> {
    if (this.#waiter !== null) return Promise.reject(new Error('concurrent read on a RawClient'));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#waiter = null;
        reject(new TimeoutError(`read(${n}) timed out after ${timeout} ms with ${this.#length} bytes buffered`));
      }, timeout);
      this.#waiter = { n, resolve, reject, timer };
      this.#serve();
    });
  }

  /** Resolves true once the server closes the connection, false if it is still open after `timeout`. */
  async closed(timeout = DEFAULT_TIMEOUT): Promise<boolean> {
    if (this.#ended) return true;
    let timer: NodeJS.Timeout | undefined;
    const expired = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), timeout);
    });
    const result = await Promise.race([this.#closedPromise.then(() => true), expired]);
    clearTimeout(timer);
    return result;
  }

  /** Everything the server sends until it closes (bounded by `timeout`). */
  async readToEnd(timeout = DEFAULT_TIMEOUT): Promise<Buffer> {
    if (!(await this.closed(timeout))) throw new TimeoutError(`connection still open after ${timeout} ms`);
    const all = Buffer.concat(this.#chunks);
    this.#chunks = [];
    this.#length = 0;
    return all;
  }

  destroy(): void {
    this.socket.destroy();
  }

  #serve(): void {
    const waiter = this.#waiter;
    if (waiter === null) return;
    if (this.#length >= waiter.n) {
      this.#waiter = null;
      clearTimeout(waiter.timer);
      waiter.resolve(this.#take(waiter.n));
    } else if (this.#ended) {
      this.#waiter = null;
      clearTimeout(waiter.timer);
      waiter.reject(new Error(`connection closed with ${this.#length} of ${waiter.n} bytes`));
    }
  }

  /**
   * The first `n` buffered bytes (n <= #length): a view of the first chunk when it holds them
   * all (a session's small replies usually do), else one copy of exactly `n` bytes.
   */
  #take(n: number): Buffer {
    if (n === 0) return Buffer.alloc(0);
    const chunks = this.#chunks;
    this.#length -= n;
    // #length counted at least n > 0 bytes, so chunks[0] exists.
    const first = chunks[0] as Buffer;
    if (first.length >= n) {
      if (first.length === n) chunks.shift();
      else chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let done = 0;
    while (done < n) {
      const chunk = chunks[0] as Buffer;
      const k = Math.min(chunk.length, n - done);
      chunk.copy(out, done, 0, k);
      if (k === chunk.length) chunks.shift();
      else chunks[0] = chunk.subarray(k);
      done += k;
    }
    return out;
  }
}
