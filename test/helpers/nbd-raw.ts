// Test helpers for the server layer: a raw NBD socket client that sends hand-written bytes and
// reads exact byte counts (every read bounded by a timeout, so a hang fails instead of blocking),
// and an in-memory BlockDevice whose calls can be held at a gate to keep requests in flight.

import { writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import type { BlockDevice, Extent, ExtentState, WriteOptions, ZeroOptions } from '../../lib/block/device.js';
import type { ListenAddress } from '../../lib/server/server.js';

export const DEFAULT_TIMEOUT = 5000;

// Wire numbers written out here (not imported) so the tests do not trust the code under test.
const NBDMAGIC = 0x4e42444d41474943n;
const IHAVEOPT = 0x49484156454f5054n;
const REP_MAGIC = 0x3e889045565a9n;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_MAGIC = 0x67446698;
const STRUCTURED_MAGIC = 0x668e33ef;

export class TimeoutError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'TimeoutError';
  }
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
    socket.on('data', (chunk: Buffer) => {
      this.#chunks.push(chunk);
      this.#length += chunk.length;
      this.#serve();
    });
    const onGone = (): void => {
      if (this.#ended) return;
      this.#ended = true;
      resolveClosed();
      this.#serve();
    };
    socket.on('end', onGone);
    socket.on('close', onGone);
    // A reset from the server is a form of closing; the tests look at `closed`, not at errors.
    socket.on('error', () => undefined);
  }

  /** Connect to a listener; `allowHalfOpen` keeps our side writable after the server's FIN. */
  static connect(address: ListenAddress, options: { allowHalfOpen?: boolean; timeout?: number } = {}): Promise<RawClient> {
    const timeout = options.timeout ?? DEFAULT_TIMEOUT;
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
      const all = Buffer.concat(this.#chunks);
      const out = all.subarray(0, waiter.n);
      const rest = all.subarray(waiter.n);
      this.#chunks = rest.length > 0 ? [rest] : [];
      this.#length = rest.length;
      waiter.resolve(out);
    } else if (this.#ended) {
      this.#waiter = null;
      clearTimeout(waiter.timer);
      waiter.reject(new Error(`connection closed with ${this.#length} of ${waiter.n} bytes`));
    }
  }
}

// ---- hand-made messages -------------------------------------------------------------------

export function u32(n: number): Buffer {
  const buf = Buffer.alloc(4);
  buf.writeUInt32BE(n >>> 0, 0);
  return buf;
}

export function u16(n: number): Buffer {
  const buf = Buffer.alloc(2);
  buf.writeUInt16BE(n, 0);
  return buf;
}

/** An option request: IHAVEOPT, option, length, data. */
export function optionBytes(option: number, data: Buffer = Buffer.alloc(0), length = data.length): Buffer {
  const head = Buffer.alloc(16);
  head.writeBigUInt64BE(IHAVEOPT, 0);
  head.writeUInt32BE(option, 8);
  head.writeUInt32BE(length >>> 0, 12);
  return Buffer.concat([head, data]);
}

/** GO/INFO data: name length, name, count, info types. */
export function infoRequestData(name: string, infoTypes: readonly number[] = []): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  return Buffer.concat([u32(nameBytes.length), nameBytes, u16(infoTypes.length), ...infoTypes.map(u16)]);
}

/** LIST/SET_META_CONTEXT data: name length, name, query count, queries. */
export function metaContextData(name: string, queries: readonly string[]): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const parts = [u32(nameBytes.length), nameBytes, u32(queries.length)];
  for (const q of queries) {
    const b = Buffer.from(q, 'utf8');
    parts.push(u32(b.length), b);
  }
  return Buffer.concat(parts);
}

export interface RawRequest {
  readonly type: number;
  readonly flags?: number;
  readonly cookie?: bigint;
  readonly offset?: number | bigint;
  readonly length?: number;
  readonly magic?: number;
}

/** A 28-byte request header (payload not included). */
export function requestBytes(req: RawRequest): Buffer {
  const buf = Buffer.alloc(28);
  buf.writeUInt32BE(req.magic ?? REQUEST_MAGIC, 0);
  buf.writeUInt16BE(req.flags ?? 0, 4);
  buf.writeUInt16BE(req.type, 6);
  buf.writeBigUInt64BE(req.cookie ?? 0n, 8);
  buf.writeBigUInt64BE(BigInt(req.offset ?? 0), 16);
  buf.writeUInt32BE(req.length ?? 0, 24);
  return buf;
}

export interface OptionReplyRead {
  readonly option: number;
  readonly replyType: number;
  readonly payload: Buffer;
  /** Header and payload as received. */
  readonly bytes: Buffer;
}

export async function readOptionReply(client: RawClient, timeout = DEFAULT_TIMEOUT): Promise<OptionReplyRead> {
  const head = await client.read(20, timeout);
  if (head.readBigUInt64BE(0) !== REP_MAGIC) throw new Error(`bad option reply magic in ${head.toString('hex')}`);
  const length = head.readUInt32BE(16);
  const payload = length > 0 ? await client.read(length, timeout) : Buffer.alloc(0);
  return {
    option: head.readUInt32BE(8),
    replyType: head.readUInt32BE(12),
    payload,
    bytes: Buffer.concat([head, payload]),
  };
}

/** Option replies up to and including the final one (ACK or an error). */
export async function readOptionReplies(client: RawClient, timeout = DEFAULT_TIMEOUT): Promise<OptionReplyRead[]> {
  const replies: OptionReplyRead[] = [];
  for (;;) {
    const reply = await readOptionReply(client, timeout);
    replies.push(reply);
    if (reply.replyType === 1 || reply.replyType >= 0x80000000) return replies;
  }
}

/** Read the 18-byte greeting (checked) and answer with client flags. */
export async function greet(client: RawClient, clientFlags = 0b11): Promise<Buffer> {
  const greeting = await client.read(18);
  if (greeting.readBigUInt64BE(0) !== NBDMAGIC || greeting.readBigUInt64BE(8) !== IHAVEOPT) {
    throw new Error(`bad greeting ${greeting.toString('hex')}`);
  }
  client.write(u32(clientFlags));
  return greeting;
}

export interface NegotiateOptions {
  readonly structured?: boolean;
  /** SET_META_CONTEXT queries (needs structured). */
  readonly metaContexts?: readonly string[];
  readonly exportName?: string;
  readonly allowHalfOpen?: boolean;
}

export interface Negotiated {
  readonly client: RawClient;
  readonly size: number;
  readonly flags: number;
  /** Context ids from SET_META_CONTEXT, by name. */
  readonly contextIds: ReadonlyMap<string, number>;
}

/** Connect and negotiate with fixed newstyle + GO; the client is in transmission afterwards. */
export async function negotiate(address: ListenAddress, options: NegotiateOptions = {}): Promise<Negotiated> {
  const client = await RawClient.connect(
    address,
    options.allowHalfOpen === undefined ? {} : { allowHalfOpen: options.allowHalfOpen },
  );
  await greet(client);
  const contextIds = new Map<string, number>();
  if (options.structured === true) {
    client.write(optionBytes(8));
    const [ack] = await readOptionReplies(client);
    if (ack?.replyType !== 1) throw new Error('STRUCTURED_REPLY not acknowledged');
  }
  if (options.metaContexts !== undefined) {
    client.write(optionBytes(10, metaContextData(options.exportName ?? '', options.metaContexts)));
    for (const reply of await readOptionReplies(client)) {
      if (reply.replyType === 4) contextIds.set(reply.payload.subarray(4).toString('utf8'), reply.payload.readUInt32BE(0));
      else if (reply.replyType !== 1) throw new Error(`SET_META_CONTEXT failed: 0x${reply.replyType.toString(16)}`);
    }
  }
  client.write(optionBytes(7, infoRequestData(options.exportName ?? '')));
  let size = -1;
  let flags = -1;
  for (const reply of await readOptionReplies(client)) {
    if (reply.replyType === 3 && reply.payload.readUInt16BE(0) === 0) {
      size = Number(reply.payload.readBigUInt64BE(2));
      flags = reply.payload.readUInt16BE(10);
    } else if (reply.replyType !== 3 && reply.replyType !== 1) {
      throw new Error(`GO failed: 0x${reply.replyType.toString(16)} ${reply.payload.toString()}`);
    }
  }
  return { client, size, flags, contextIds };
}

export interface SimpleReplyRead {
  readonly error: number;
  readonly cookie: bigint;
  readonly bytes: Buffer;
}

export async function readSimpleReply(client: RawClient, timeout = DEFAULT_TIMEOUT): Promise<SimpleReplyRead> {
  const bytes = await client.read(16, timeout);
  if (bytes.readUInt32BE(0) !== SIMPLE_MAGIC) throw new Error(`not a simple reply: ${bytes.toString('hex')}`);
  return { error: bytes.readUInt32BE(4), cookie: bytes.readBigUInt64BE(8), bytes };
}

export interface ChunkRead {
  readonly flags: number;
  readonly type: number;
  readonly cookie: bigint;
  readonly payload: Buffer;
  readonly bytes: Buffer;
}

export async function readChunk(client: RawClient, timeout = DEFAULT_TIMEOUT): Promise<ChunkRead> {
  const head = await client.read(20, timeout);
  if (head.readUInt32BE(0) !== STRUCTURED_MAGIC) throw new Error(`not a structured chunk: ${head.toString('hex')}`);
  const length = head.readUInt32BE(16);
  const payload = length > 0 ? await client.read(length, timeout) : Buffer.alloc(0);
  return {
    flags: head.readUInt16BE(4),
    type: head.readUInt16BE(6),
    cookie: head.readBigUInt64BE(8),
    payload,
    bytes: Buffer.concat([head, payload]),
  };
}

/** Reject after `ms` unless `promise` settles first. */
export async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new TimeoutError(`${what} did not finish within ${ms} ms`)), ms);
  });
  try {
    return await Promise.race([promise, expired]);
  } finally {
    clearTimeout(timer);
  }
}

/** Poll `check` every few ms until true, failing after `timeout`. */
export async function waitFor(check: () => boolean, what: string, timeout = DEFAULT_TIMEOUT): Promise<void> {
  const deadline = Date.now() + timeout;
  while (!check()) {
    if (Date.now() > deadline) throw new TimeoutError(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** A deterministic pattern file of `size` bytes (byte i = (i * 7 + 1) & 0xff, never all zero). */
export function patternBuffer(size: number): Buffer {
  const buf = Buffer.alloc(size);
  for (let i = 0; i < size; i++) buf[i] = (i * 7 + 1) & 0xff;
  return buf;
}

export function writeBaseFile(dir: string, size: number, name = 'base.img'): { path: string; bytes: Buffer } {
  const path = join(dir, name);
  const bytes = patternBuffer(size);
  writeFileSync(path, bytes);
  return { path, bytes };
}

// ---- an in-memory BlockDevice ---------------------------------------------------------------

export interface FakeCall {
  readonly op: 'read' | 'write' | 'zero' | 'trim' | 'flush' | 'cache' | 'extents' | 'close';
  readonly offset?: number;
  readonly length?: number;
  readonly options?: WriteOptions | ZeroOptions;
}

const STATE_CODES: readonly ExtentState[] = ['base', 'data', 'zero'];

/**
 * A BlockDevice over a Buffer. `hold()` makes every later call wait until `release()`;
 * `failNext(op, code)` makes the next call of that kind throw an Error with that `code`.
 */
export class FakeDevice implements BlockDevice {
  readonly size: number;
  readonly writable: boolean;
  readonly data: Buffer;
  readonly calls: FakeCall[] = [];
  /** Per-byte extent states for extents(): 0 base, 1 data, 2 zero (see setState). */
  readonly states: Uint8Array;
  closed = false;
  #gate: Promise<void> | null = null;
  #open: () => void = () => undefined;
  #pending = 0;
  #failures = new Map<FakeCall['op'], unknown>();

  constructor(size: number, options: { writable?: boolean; data?: Buffer } = {}) {
    this.size = size;
    this.writable = options.writable ?? true;
    this.data = options.data ?? Buffer.alloc(size);
    this.states = new Uint8Array(size);
  }

  /** Mark [start, end) as base, data or zero for extents(). */
  setState(state: ExtentState, start: number, end: number): void {
    this.states.fill(STATE_CODES.indexOf(state), start, end);
  }

  /** Calls waiting at the gate. */
  get pending(): number {
    return this.#pending;
  }

  hold(): void {
    this.#gate ??= new Promise((resolve) => {
      this.#open = resolve;
    });
  }

  release(): void {
    this.#gate = null;
    this.#open();
  }

  failNext(op: FakeCall['op'], error: unknown): void {
    this.#failures.set(op, error);
  }

  async #enter(call: FakeCall): Promise<void> {
    this.calls.push(call);
    const gate = this.#gate;
    if (gate !== null) {
      this.#pending++;
      await gate;
      this.#pending--;
    }
    if (this.#failures.has(call.op)) {
      const error = this.#failures.get(call.op);
      this.#failures.delete(call.op);
      throw error;
    }
  }

  async read(offset: number, dest: Buffer): Promise<void> {
    await this.#enter({ op: 'read', offset, length: dest.length });
    this.data.copy(dest, 0, offset, offset + dest.length);
  }

  async write(offset: number, data: Buffer, options: WriteOptions): Promise<void> {
    await this.#enter({ op: 'write', offset, length: data.length, options });
    data.copy(this.data, offset);
    this.setState('data', offset, offset + data.length);
  }

  async zero(offset: number, length: number, options: ZeroOptions): Promise<void> {
    await this.#enter({ op: 'zero', offset, length, options });
    this.data.fill(0, offset, offset + length);
    this.setState(options.noHole ? 'data' : 'zero', offset, offset + length);
  }

  async trim(offset: number, length: number, options: WriteOptions): Promise<void> {
    await this.#enter({ op: 'trim', offset, length, options });
    this.data.fill(0, offset, offset + length);
    this.setState('zero', offset, offset + length);
  }

  async flush(): Promise<void> {
    await this.#enter({ op: 'flush' });
  }

  async cache(offset: number, length: number): Promise<void> {
    await this.#enter({ op: 'cache', offset, length });
  }

  async extents(offset: number, length: number, maxExtents: number): Promise<Extent[]> {
    await this.#enter({ op: 'extents', offset, length });
    const out: Extent[] = [];
    const end = Math.min(this.size, offset + length);
    let at = offset;
    while (at < end && out.length < maxExtents) {
      const code = this.states[at];
      let stop = at + 1;
      while (stop < end && this.states[stop] === code) stop++;
      out.push({ length: stop - at, state: STATE_CODES[code ?? 0] ?? 'base' });
      at = stop;
    }
    return out;
  }

  async close(): Promise<void> {
    this.calls.push({ op: 'close' });
    this.closed = true;
  }
}
