// A minimal NBD client for the benchmark: fixed-newstyle handshake with NBD_OPT_GO and
// simple replies only (no structured replies, no TLS). Enough for throwaway sessions, the
// readiness probe and the 1,000-connection scale run, and independent of the server under test.
// Node standard library only. All integers on the wire are big-endian.

import net from 'node:net';

const NBDMAGIC = 0x4e42444d41474943n;
const IHAVEOPT = 0x49484156454f5054n;
const REP_MAGIC = 0x3e889045565a9n;
const REQUEST_MAGIC = 0x25609513;
const SIMPLE_REPLY_MAGIC = 0x67446698;

const FLAG_FIXED_NEWSTYLE = 1;
const FLAG_NO_ZEROES = 2;
const OPT_GO = 7;
const REP_ACK = 1;
const REP_INFO = 3;
const INFO_EXPORT = 0;

const CMD_READ = 0;
const CMD_WRITE = 1;
const CMD_DISC = 2;

class NbdError extends Error {}

/** Buffers a socket's incoming bytes and hands them out in exact-sized pieces. */
class Reader {
  #chunks = [];
  #have = 0;
  #want = null; // { n, resolve, reject }
  #failed = null;

  constructor(socket) {
    socket.on('data', (chunk) => {
      this.#chunks.push(chunk);
      this.#have += chunk.length;
      this.#pump();
    });
    const fail = (err) => {
      if (this.#failed === null) this.#failed = err;
      this.#pump();
    };
    socket.on('error', fail);
    socket.on('end', () => fail(new NbdError('server closed the connection')));
    socket.on('close', () => fail(new NbdError('connection closed')));
  }

  /** Resolves with exactly n bytes. One read at a time. */
  read(n) {
    return new Promise((resolve, reject) => {
      this.#want = { n, resolve, reject };
      this.#pump();
    });
  }

  #pump() {
    const w = this.#want;
    if (w === null) return;
    if (this.#have >= w.n) {
      this.#want = null;
      const all = this.#chunks.length === 1 ? this.#chunks[0] : Buffer.concat(this.#chunks);
      const out = all.subarray(0, w.n);
      const rest = all.subarray(w.n);
      this.#chunks = rest.length > 0 ? [rest] : [];
      this.#have = rest.length;
      w.resolve(out);
    } else if (this.#failed !== null) {
      this.#want = null;
      w.reject(this.#failed);
    }
  }
}

function connectSocket(target, timeoutMs) {
  return new Promise((resolve, reject) => {
    const socket =
      target.kind === 'unix'
        ? net.createConnection({ path: target.path })
        : net.createConnection({ host: target.host, port: target.port });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new NbdError(`connect timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeListener('error', onError);
      if (target.kind === 'tcp') socket.setNoDelay(true);
      resolve(socket);
    });
    const onError = (err) => {
      clearTimeout(timer);
      reject(err);
    };
    socket.once('error', onError);
  });
}

/** One NBD connection in the transmission phase, requests issued one at a time. */
export class NbdConnection {
  #socket;
  #reader;
  #handle = 0n;
  size = 0;

  constructor(socket) {
    this.#socket = socket;
    this.#reader = new Reader(socket);
    // Errors are reported through the reader; keep Node from throwing on an unhandled one.
    socket.on('error', () => {});
  }

  /**
   * Connect and negotiate `exportName` with NBD_OPT_GO (no info requests).
   * target: { kind: 'tcp', host, port } or { kind: 'unix', path }.
   */
  static async open(target, exportName = '', { timeoutMs = 10000 } = {}) {
    const socket = await connectSocket(target, timeoutMs);
    const conn = new NbdConnection(socket);
    const timer = setTimeout(() => socket.destroy(new NbdError(`handshake timed out after ${timeoutMs} ms`)), timeoutMs);
    try {
      await conn.#handshake(exportName);
    } catch (err) {
      socket.destroy();
      throw err;
    } finally {
      clearTimeout(timer);
    }
    return conn;
  }

  async #handshake(exportName) {
    const greeting = await this.#reader.read(18);
    if (greeting.readBigUInt64BE(0) !== NBDMAGIC) throw new NbdError('bad NBDMAGIC in greeting');
    if (greeting.readBigUInt64BE(8) !== IHAVEOPT) throw new NbdError('not a newstyle server');
    const serverFlags = greeting.readUInt16BE(16);
    if ((serverFlags & FLAG_FIXED_NEWSTYLE) === 0) throw new NbdError('server is not fixed-newstyle');
    const clientFlags = FLAG_FIXED_NEWSTYLE | (serverFlags & FLAG_NO_ZEROES);

    // Client flags and the GO option go out in one write.
    const name = Buffer.from(exportName, 'utf8');
    const msg = Buffer.alloc(4 + 16 + 4 + name.length + 2);
    msg.writeUInt32BE(clientFlags, 0);
    msg.writeBigUInt64BE(IHAVEOPT, 4);
    msg.writeUInt32BE(OPT_GO, 12);
    msg.writeUInt32BE(4 + name.length + 2, 16);
    msg.writeUInt32BE(name.length, 20);
    name.copy(msg, 24);
    msg.writeUInt16BE(0, 24 + name.length); // no NBD_INFO_* requests
    this.#socket.write(msg);

    let gotExport = false;
    for (;;) {
      const hdr = await this.#reader.read(20);
      if (hdr.readBigUInt64BE(0) !== REP_MAGIC) throw new NbdError('bad option reply magic');
      const option = hdr.readUInt32BE(8);
      const type = hdr.readUInt32BE(12);
      const len = hdr.readUInt32BE(16);
      const payload = len > 0 ? await this.#reader.read(len) : Buffer.alloc(0);
      if (option !== OPT_GO) throw new NbdError(`reply to option ${option}, expected NBD_OPT_GO`);
      if (type === REP_ACK) break;
      if (type === REP_INFO) {
        if (payload.length >= 12 && payload.readUInt16BE(0) === INFO_EXPORT) {
          this.size = Number(payload.readBigUInt64BE(2));
          gotExport = true;
        }
        continue;
      }
      if (type & 0x80000000) {
        const text = payload.toString('utf8');
        throw new NbdError(`NBD_OPT_GO refused: reply type 0x${type.toString(16)}${text ? `: ${text}` : ''}`);
      }
      // Unknown non-error reply types are ignored.
    }
    if (!gotExport) throw new NbdError('server omitted NBD_INFO_EXPORT');
  }

  #request(type, offset, length, data) {
    const handle = ++this.#handle;
    const req = Buffer.alloc(28);
    req.writeUInt32BE(REQUEST_MAGIC, 0);
    req.writeUInt16BE(0, 4);
    req.writeUInt16BE(type, 6);
    req.writeBigUInt64BE(handle, 8);
    req.writeBigUInt64BE(BigInt(offset), 16);
    req.writeUInt32BE(length, 24);
    this.#socket.write(data ? Buffer.concat([req, data]) : req);
    return handle;
  }

  async #simpleReply(handle, payloadLength) {
    const rep = await this.#reader.read(16);
    if (rep.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC)
      throw new NbdError('bad reply magic (structured replies were not negotiated)');
    const err = rep.readUInt32BE(4);
    if (rep.readBigUInt64BE(8) !== handle) throw new NbdError('reply handle does not match the request');
    if (err !== 0) throw new NbdError(`server returned error ${err}`);
    return payloadLength > 0 ? this.#reader.read(payloadLength) : Buffer.alloc(0);
  }

  async pread(length, offset) {
    const handle = this.#request(CMD_READ, offset, length, null);
    return this.#simpleReply(handle, length);
  }

  async pwrite(data, offset) {
    const handle = this.#request(CMD_WRITE, offset, data.length, data);
    await this.#simpleReply(handle, 0);
  }

  /** NBD_CMD_DISC, then wait (bounded) for the server to close the connection. */
  async disconnect(timeoutMs = 5000) {
    const socket = this.#socket;
    if (socket.destroyed) return;
    const closed = new Promise((resolve) => socket.once('close', resolve));
    this.#request(CMD_DISC, 0, 0, null);
    socket.end();
    const timer = setTimeout(() => socket.destroy(), timeoutMs);
    await closed;
    clearTimeout(timer);
  }

  destroy() {
    this.#socket.destroy();
  }
}
