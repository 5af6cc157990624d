// An NBD session for the benchmark (and any test that wants one): fixed-newstyle handshake with
// NBD_OPT_GO and simple replies only, then reads and writes one at a time. Built on RawClient,
// so every read is exact and bounded by a timeout; cheap enough for 1,000 open connections.

import type { ListenAddress } from '../../../lib/server/listener.js';
import { RawClient } from './client.js';
import { readOptionReply, readSimpleReply } from './replies.js';
import {
  IHAVEOPT,
  infoRequestData,
  NBD_CMD_DISC,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_INFO_EXPORT,
  NBD_OPT_GO,
  NBD_REP_ACK,
  NBD_REP_FLAG_ERROR,
  NBD_REP_INFO,
  NBDMAGIC,
  optionBytes,
  requestBytes,
  u32,
} from './wire.js';

const DEFAULT_SESSION_TIMEOUT_MS = 10_000;

export interface SessionOptions {
  /** Bounds the connect and every single read of the session. */
  readonly timeoutMs?: number;
}

/** One connection in the transmission phase; requests are issued one at a time. */
export class NbdSession {
  readonly #client: RawClient;
  readonly #timeoutMs: number;
  #cookie = 0n;
  /** The export's size from NBD_INFO_EXPORT. */
  size = 0;

  private constructor(client: RawClient, timeoutMs: number) {
    this.#client = client;
    this.#timeoutMs = timeoutMs;
  }

  /** Connect and negotiate `exportName` with NBD_OPT_GO (no NBD_INFO_* requests). */
  static async open(address: ListenAddress, exportName = '', options: SessionOptions = {}): Promise<NbdSession> {
    const timeoutMs = options.timeoutMs ?? DEFAULT_SESSION_TIMEOUT_MS;
    const client = await RawClient.connect(address, { timeout: timeoutMs });
    const session = new NbdSession(client, timeoutMs);
    try {
      await session.#handshake(exportName);
    } catch (err) {
      client.destroy();
      throw err;
    }
    return session;
  }

  async #handshake(exportName: string): Promise<void> {
    const client = this.#client;
    const greeting = await client.read(18, this.#timeoutMs);
    if (greeting.readBigUInt64BE(0) !== NBDMAGIC) throw new Error('bad NBDMAGIC in greeting');
    if (greeting.readBigUInt64BE(8) !== IHAVEOPT) throw new Error('not a newstyle server');
    const serverFlags = greeting.readUInt16BE(16);
    if ((serverFlags & NBD_FLAG_FIXED_NEWSTYLE) === 0) throw new Error('server is not fixed-newstyle');
    const clientFlags = NBD_FLAG_FIXED_NEWSTYLE | (serverFlags & NBD_FLAG_NO_ZEROES);
    // Client flags and GO in one write: two small writes would wait on Nagle and delayed ACK
    // against servers that leave Nagle on (bench/README.md, "Reading the numbers").
    client.write(Buffer.concat([u32(clientFlags), optionBytes(NBD_OPT_GO, infoRequestData(exportName))]));

    let gotExport = false;
    for (;;) {
      const reply = await readOptionReply(client, this.#timeoutMs);
      if (reply.option !== NBD_OPT_GO) throw new Error(`reply to option ${reply.option}, expected NBD_OPT_GO`);
      if (reply.replyType === NBD_REP_ACK) break;
      const payload = reply.payload;
      if (reply.replyType === NBD_REP_INFO) {
        if (payload.length >= 12 && payload.readUInt16BE(0) === NBD_INFO_EXPORT) {
          this.size = Number(payload.readBigUInt64BE(2));
          gotExport = true;
        }
      } else if ((reply.replyType & NBD_REP_FLAG_ERROR) !== 0) {
        const text = payload.toString('utf8');
        throw new Error(`NBD_OPT_GO refused: reply type 0x${reply.replyType.toString(16)}${text ? `: ${text}` : ''}`);
      }
      // Other non-error reply types are ignored.
    }
    if (!gotExport) throw new Error('server omitted NBD_INFO_EXPORT');
  }

  #send(type: number, offset: number, length: number, data?: Buffer): bigint {
    const cookie = ++this.#cookie;
    const header = requestBytes({ type, cookie, offset, length });
    // Header and payload in one write, for the same reason as the handshake's.
    this.#client.write(data === undefined ? header : Buffer.concat([header, data]));
    return cookie;
  }

  async #reply(cookie: bigint, payloadLength: number): Promise<Buffer> {
    const reply = await readSimpleReply(this.#client, this.#timeoutMs);
    if (reply.cookie !== cookie) throw new Error('reply cookie does not match the request');
    if (reply.error !== 0) throw new Error(`server returned error ${reply.error}`);
    return payloadLength > 0 ? this.#client.read(payloadLength, this.#timeoutMs) : Buffer.alloc(0);
  }

  pread(length: number, offset: number): Promise<Buffer> {
    return this.#reply(this.#send(NBD_CMD_READ, offset, length), length);
  }

  async pwrite(data: Buffer, offset: number): Promise<void> {
    await this.#reply(this.#send(NBD_CMD_WRITE, offset, data.length, data), 0);
  }

  /** NBD_CMD_DISC, then wait (at most `timeoutMs`, then reset) for the connection to close. */
  async disconnect(timeoutMs = 5000): Promise<void> {
    const socket = this.#client.socket;
    if (socket.destroyed) return;
    const closed = new Promise((resolve) => socket.once('close', resolve));
    this.#send(NBD_CMD_DISC, 0, 0);
    socket.end();
    const timer = setTimeout(() => socket.destroy(), timeoutMs);
    await closed;
    clearTimeout(timer);
  }

  destroy(): void {
    this.#client.destroy();
  }
}
