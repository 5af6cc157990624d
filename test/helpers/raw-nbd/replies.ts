// Reading replies off a RawClient: option replies, simple replies and structured chunks, each
// checked for its magic and returned with the bytes as received.

import { DEFAULT_TIMEOUT } from '../wait.js';
import type { RawClient } from './client.js';
import { REP_MAGIC, SIMPLE_MAGIC, STRUCTURED_MAGIC } from './wire.js';

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
