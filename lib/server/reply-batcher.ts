// Replies leave in batches: every message written while one event is handled (up to the end of
// that turn's microtasks: a data chunk of pipelined requests served from the page cache) goes
// out under one cork, i.e. in one writev. Large reply buffers from the pool go back to it once
// the socket has written them.

import type { Socket } from 'node:net';
import { type BufferPool, POOL_MIN_BYTES } from '../buffer-pool.js';

export class ReplyBatcher {
  readonly #socket: Socket;
  readonly #pool: BufferPool;
  #corked = false;

  constructor(socket: Socket, pool: BufferPool) {
    this.#socket = socket;
    this.#pool = pool;
  }

  /** Queue each message whole; returns the bytes now waiting in the socket. */
  write(messages: readonly Buffer[]): number {
    const socket = this.#socket;
    if (!this.#corked) {
      this.#corked = true;
      socket.cork();
      // After the microtask queue drains, so replies finished by this event share the writev.
      process.nextTick(() => this.flush());
    }
    const pool = this.#pool;
    for (const message of messages) {
      if (message.length >= POOL_MIN_BYTES) socket.write(message, () => pool.release(message));
      else socket.write(message);
    }
    return socket.writableLength;
  }

  /** Send what is batched now (before ending the socket). */
  flush(): void {
    if (!this.#corked) return;
    this.#corked = false;
    this.#socket.uncork();
  }
}
