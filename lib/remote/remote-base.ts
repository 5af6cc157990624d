// A base image held on an HTTP(S) server, served through the local block cache: a BaseImage
// like the base file, so throwaway and named overlays, layers, block status and the overlay
// tools work on it unchanged.
//
// A read takes what the cache holds and fetches the rest, CACHE_BLOCK_SIZE blocks at a time:
//   - single flight: a block being fetched is waited for, never asked for twice, however many
//     connections read it at once;
//   - the missing blocks of one read go in as few requests as possible (runs of adjacent
//     blocks, at most MAX_FETCH_BYTES each);
//   - read-ahead: a read that continues where an earlier one ended (a sequential stream, up to
//     STREAMS followed at once) also fetches, in the background, the blocks of the next read
//     of its length (at most READ_AHEAD_MAX), so the stream's next read finds its blocks
//     fetched or on the way, and when the stream stops, at most one read's worth was fetched
//     for nothing. Measured on a guest boot (test/guest/remote-base.test.ts): a window growing
//     with the stream up to 4 MiB fetched 2.06x the bytes the guest read, twice the read 1.13x,
//     one read 1.09x;
//   - a fetch that fails after its retries fails the reads waiting for it (EIO, or ESTALE when
//     the image changed on the server) and nothing else: the next read tries again.
//   - prefetch (--prefetch) walks the image from the start and fetches what the cache does not
//     hold, one request at a time and only while no client's fetch waits, until the image is
//     cached or the cache is full.
//
// Identity: the size with the ETag and Last-Modified of the version opened (open-remote-base.ts).

import type { BaseIdentity } from '../block/base-image.js';
import { ReadOnlyImage } from '../block/base-image.js';
import { codedError } from '../block/coded-error.js';
import type { Extent } from '../block/device.js';
import type { InlineIoGuard } from '../block/inline-io-guard.js';
import type { BlockCache } from './block-cache.js';
import type { HttpOrigin } from './http-origin.js';
import type { RemoteLog } from './remote-options.js';

/** Largest single request: adjacent missing blocks beyond it go in further requests. */
export const MAX_FETCH_BYTES = 4 * 1024 * 1024;
export const READ_AHEAD_MAX = 1024 * 1024;
const STREAMS = 16;
const PREFETCH_PAUSE_MS = 50;

export interface RemoteBaseStats {
  /** Range requests answered, and the body bytes they brought. */
  readonly fetches: number;
  readonly bytesFetched: number;
  readonly retries: number;
  readonly failures: number;
  /** Blocks a read found in the cache, and blocks it had to wait for a fetch of. */
  readonly hits: number;
  readonly misses: number;
  readonly cachedBlocks: number;
  readonly cacheSlots: number;
  /** Bytes the cache holds, and the most it may hold (blocks × the cache's block size). */
  readonly cachedBytes: number;
  readonly cacheCapacity: number;
  /** Bytes of the image read at least once (whole 4 KiB pages): what fetched bytes compare with. */
  readonly distinctBytesRead: number;
}

/** Granularity of distinctBytesRead. */
const PAGE = 4096;

interface Stream {
  /** Where the stream's last read ended. */
  end: number;
  /** Bytes it has read in order. */
  length: number;
}

export class RemoteBase extends ReadOnlyImage {
  readonly path: string;
  readonly identity: BaseIdentity;
  readonly #origin: HttpOrigin;
  readonly #cache: BlockCache;
  readonly #blockSize: number;
  readonly #log: RemoteLog;
  /** A bit per PAGE of the image: read at least once. */
  readonly #pagesRead: Uint8Array;
  #distinctPages = 0;
  /** Block → its bytes, while a fetch of it runs. */
  readonly #inFlight = new Map<number, Promise<Buffer>>();
  /** Each running fetch's end: kept in the cache (or failed) and no longer in flight. */
  readonly #kept = new Set<Promise<void>>();
  readonly #streams: Stream[] = [];
  #hits = 0;
  #misses = 0;
  /** Fetches for clients' reads running now (prefetch waits while there are any). */
  #clientFetches = 0;
  #closed = false;
  /** Owners that have not closed it yet (retain()). */
  #owners = 1;
  #markClosed: () => void = () => undefined;
  readonly #whenClosed = new Promise<void>((resolve) => {
    this.#markClosed = resolve;
  });
  #prefetching: Promise<void> | undefined;

  constructor(origin: HttpOrigin, cache: BlockCache, identity: BaseIdentity, log: RemoteLog) {
    super();
    this.path = origin.shown;
    this.identity = identity;
    this.#origin = origin;
    this.#cache = cache;
    this.#blockSize = cache.blockSize;
    this.#log = log;
    this.#pagesRead = new Uint8Array(Math.ceil(identity.size / PAGE / 8));
  }

  get stats(): RemoteBaseStats {
    const { requests, bytes, retries, failures } = this.#origin.counters;
    return {
      fetches: requests,
      bytesFetched: bytes,
      retries,
      failures,
      hits: this.#hits,
      misses: this.#misses,
      cachedBlocks: this.#cache.cachedBlocks,
      cacheSlots: this.#cache.slots,
      cachedBytes: this.#cache.cachedBlocks * this.#blockSize,
      cacheCapacity: this.#cache.slots * this.#blockSize,
      distinctBytesRead: Math.min(this.size, this.#distinctPages * PAGE),
    };
  }

  async read(offset: number, dest: Buffer, guard?: InlineIoGuard): Promise<void> {
    if (this.#closed) throw codedError('ESHUTDOWN', `base image ${this.path} is closed`);
    const end = offset + dest.length;
    if (dest.length === 0) return;
    const bs = this.#blockSize;
    const first = Math.floor(offset / bs);
    const last = Math.floor((end - 1) / bs);
    // Warm: every block held, in consecutive slots: one file read, as from a base file.
    const span = this.#cache.readSpan(first, last - first + 1, offset - first * bs, dest, guard);
    if (span !== undefined) {
      this.#hits += last - first + 1;
      this.#followStream(offset, end);
      this.#notePages(offset, end);
      return span;
    }
    const pieces: Array<Promise<void>> = [];
    const missing: number[] = [];
    for (let block = first; block <= last; block++) {
      const from = Math.max(offset, block * bs);
      const to = Math.min(end, (block + 1) * bs);
      const piece = dest.subarray(from - offset, to - offset);
      const inner = from - block * bs;
      const held = this.#cache.read(block, inner, piece, guard);
      if (held !== undefined) {
        this.#hits++;
        pieces.push(held);
      } else missing.push(block);
    }
    if (missing.length > 0) {
      this.#misses += missing.length;
      const fetched = this.#blocks(missing);
      missing.forEach((block, i) => {
        const from = Math.max(offset, block * bs);
        const to = Math.min(end, (block + 1) * bs);
        const inner = from - block * bs;
        pieces.push(
          (fetched[i] as Promise<Buffer>).then((data) => void data.copy(dest, from - offset, inner, inner + (to - from))),
        );
      });
    }
    // After the read's own fetches, so its read-ahead queues behind them.
    this.#followStream(offset, end);
    this.#notePages(offset, end);
    await Promise.all(pieces);
  }

  /** Everything comes from the base: depth 1, as for a base file (cached or not). */
  async extents(offset: number, length: number): Promise<Extent[]> {
    return [{ length: Math.max(0, Math.min(length, this.size - offset)), state: 'base', depth: 1 }];
  }

  /** Start fetching the whole image in the background (see the top of this file). */
  prefetch(onDone: (message: string) => void): void {
    if (this.#prefetching !== undefined) return;
    this.#prefetching = this.#prefetchAll()
      .then(onDone)
      .catch((err: Error) => {
        if (!this.#closed) this.#log.warn(`prefetch of ${this.path} stopped: ${err.message}`);
      });
  }

  /** Resolves once every fetch running now (read-ahead included) has ended and its blocks are kept. */
  async settled(): Promise<void> {
    while (this.#kept.size > 0) await Promise.all(this.#kept);
  }

  /**
   * One more owner: it is really closed when the last owner calls close(). Two exports on one
   * URL, or an export a reload changed while the old one still has connections, share it (and
   * its cache, which one process holds once).
   */
  retain(): this {
    if (this.#closed) throw codedError('ESHUTDOWN', `base image ${this.path} is closed`);
    this.#owners++;
    return this;
  }

  get closed(): boolean {
    return this.#closed;
  }

  /** Resolves once the last owner has closed it. */
  get whenClosed(): Promise<void> {
    return this.#whenClosed;
  }

  /** Called once by each owner; the last one closes it. */
  async close(): Promise<void> {
    if (this.#closed || --this.#owners > 0) return;
    this.#closed = true;
    await this.settled();
    await this.#prefetching;
    this.#origin.close();
    await this.#cache.close();
    this.#log.info(summary(this.path, this.stats));
    this.#markClosed();
  }

  /**
   * A promise of each block's bytes, in the order asked: the running fetch of a block already on
   * its way, else a new fetch (adjacent blocks together). The promises are made at once, so a
   * read that comes next finds them in flight.
   */
  #blocks(blocks: readonly number[], forClient = true): Array<Promise<Buffer>> {
    const promises = new Array<Promise<Buffer>>(blocks.length);
    const maxBlocks = Math.max(1, Math.floor(MAX_FETCH_BYTES / this.#blockSize));
    let run: Array<{ block: number; index: number }> = [];
    const flush = (): void => {
      if (run.length === 0) return;
      const { blocks: fetched } = this.#fetchRun(run[0]?.block as number, run.length, forClient);
      for (const [i, { index }] of run.entries()) promises[index] = fetched[i] as Promise<Buffer>;
      run = [];
    };
    blocks.forEach((block, index) => {
      const running = this.#inFlight.get(block);
      if (running !== undefined) {
        flush();
        promises[index] = running;
        return;
      }
      const previous = run[run.length - 1];
      if (previous !== undefined && (previous.block + 1 !== block || run.length >= maxBlocks)) flush();
      run.push({ block, index });
    });
    flush();
    return promises;
  }

  /**
   * Fetch `count` blocks from `first` in one request: a promise of each block's bytes, and one
   * that resolves (never rejects) once they are kept in the cache and no longer in flight.
   */
  #fetchRun(first: number, count: number, forClient: boolean): { blocks: Array<Promise<Buffer>>; kept: Promise<void> } {
    const bs = this.#blockSize;
    const start = first * bs;
    const length = Math.min(count * bs, this.size - start);
    if (forClient) this.#clientFetches++;
    // Whatever went wrong on the way (refused, timed out, the image changed), the reads waiting
    // get EIO: the NBD errno a client takes for a failed read (the message keeps the cause).
    const whole = this.#origin
      .fetch(start, length)
      .catch((err: Error) => {
        throw codedError('EIO', err.message);
      })
      .finally(() => {
        if (forClient) this.#clientFetches--;
      });
    const blocks: Array<Promise<Buffer>> = [];
    for (let i = 0; i < count; i++) {
      const data = whole.then((buf) => buf.subarray(i * bs, Math.min((i + 1) * bs, buf.length)));
      // Handled here too: a read-ahead's blocks may have nobody waiting for them.
      data.catch(() => undefined);
      blocks.push(data);
      this.#inFlight.set(first + i, data);
    }
    // Kept in the cache, then no longer in flight: a read in between finds it one way or the other.
    const kept = whole
      .then(async (buf) => {
        await this.#cache.store(first, buf);
        return buf;
      })
      .catch(() => undefined)
      .then((buf) => {
        for (let i = 0; i < count; i++) this.#inFlight.delete(first + i);
        this.#kept.delete(kept);
        // The buffer goes back to the origin's pool once nothing can read it: every read that
        // found these blocks in flight copied them in a promise callback (a microtask, run
        // before setImmediate's), the cache's writes of them are done, and from now on a read
        // finds them in the cache (or, not kept, fetches them again into another buffer).
        if (buf !== undefined) setImmediate(() => this.#origin.release(buf));
      });
    this.#kept.add(kept);
    return { blocks, kept };
  }

  #notePages(offset: number, end: number): void {
    const pages = this.#pagesRead;
    for (let page = Math.floor(offset / PAGE), last = Math.floor((end - 1) / PAGE); page <= last; page++) {
      const bit = 1 << (page & 7);
      const byte = page >>> 3;
      if (((pages[byte] as number) & bit) === 0) {
        pages[byte] = (pages[byte] as number) | bit;
        this.#distinctPages++;
      }
    }
  }

  /** Note where this read ends; one that continues a stream reads ahead of it. */
  #followStream(offset: number, end: number): void {
    let stream = this.#streams.find((s) => s.end === offset);
    if (stream === undefined) {
      if (this.#streams.length >= STREAMS) this.#streams.shift();
      stream = { end, length: end - offset };
      this.#streams.push(stream);
      return;
    }
    stream.end = end;
    stream.length += end - offset;
    this.#readAhead(end, Math.min(end - offset, READ_AHEAD_MAX));
  }

  #readAhead(from: number, bytes: number): void {
    const bs = this.#blockSize;
    const first = Math.ceil(from / bs);
    const last = Math.min(Math.ceil(this.size / bs), Math.ceil((from + bytes) / bs)) - 1;
    const wanted: number[] = [];
    for (let block = first; block <= last; block++) {
      if (!this.#cache.has(block) && !this.#inFlight.has(block)) wanted.push(block);
    }
    if (wanted.length === 0) return;
    // Nobody waits: an error reaches a client only if it reads these blocks while in flight.
    this.#blocks(wanted, false);
  }

  async #prefetchAll(): Promise<string> {
    const bs = this.#blockSize;
    const blocks = Math.ceil(this.size / bs);
    const maxBlocks = Math.max(1, Math.floor(MAX_FETCH_BYTES / bs));
    const startBytes = this.#origin.counters.bytes;
    const started = Date.now();
    let block = 0;
    while (block < blocks) {
      if (this.#closed) return 'prefetch stopped: the server is closing';
      if (this.#cache.cachedBlocks >= this.#cache.slots) {
        return `prefetch of ${this.path} stopped: the cache is full (${this.#cache.slots} blocks; --cache-size)`;
      }
      if (this.#clientFetches > 0) {
        await new Promise((resolve) => setTimeout(resolve, PREFETCH_PAUSE_MS));
        continue;
      }
      while (block < blocks && (this.#cache.has(block) || this.#inFlight.has(block))) block++;
      const run: number[] = [];
      while (block < blocks && run.length < maxBlocks && !this.#cache.has(block) && !this.#inFlight.has(block)) run.push(block++);
      if (run.length === 0) continue;
      const { blocks: fetched, kept } = this.#fetchRun(run[0] as number, run.length, false);
      await Promise.all(fetched);
      // Kept before the next turn, so the fullness check above counts them.
      await kept;
    }
    const mib = ((this.#origin.counters.bytes - startBytes) / 2 ** 20).toFixed(1);
    return `prefetch of ${this.path} done: ${mib} MiB fetched in ${((Date.now() - started) / 1000).toFixed(1)} s`;
  }
}

const mib = (bytes: number): string => `${(bytes / 2 ** 20).toFixed(2)} MiB`;

/** The line a closing remote base logs: what it fetched for what was read, and the cache. */
export function summary(path: string, s: RemoteBaseStats): string {
  const problems = s.retries + s.failures === 0 ? '' : `; ${s.retries} retried, ${s.failures} failed`;
  return (
    `remote base ${path}: fetched ${mib(s.bytesFetched)} in ${s.fetches} requests for ${mib(s.distinctBytesRead)} read` +
    `${problems}; cache holds ${mib(s.cachedBytes)} of ${mib(s.cacheCapacity)}`
  );
}
