// The handshake as a test drives it: the greeting answered by hand, then fixed newstyle with
// STRUCTURED_REPLY, SET_META_CONTEXT and GO as asked; the client is in transmission afterwards.

import type { ListenAddress } from '../../../lib/server/listener.js';
import { RawClient } from './client.js';
import { readOptionReplies } from './replies.js';
import {
  IHAVEOPT,
  infoRequestData,
  metaContextData,
  NBD_INFO_EXPORT,
  NBD_OPT_GO,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBDMAGIC,
  optionBytes,
  u32,
} from './wire.js';

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
    client.write(optionBytes(NBD_OPT_STRUCTURED_REPLY));
    const [ack] = await readOptionReplies(client);
    if (ack?.replyType !== NBD_REP_ACK) throw new Error('STRUCTURED_REPLY not acknowledged');
  }
  if (options.metaContexts !== undefined) {
    client.write(optionBytes(NBD_OPT_SET_META_CONTEXT, metaContextData(options.exportName ?? '', options.metaContexts)));
    for (const reply of await readOptionReplies(client)) {
      if (reply.replyType === NBD_REP_META_CONTEXT)
        contextIds.set(reply.payload.subarray(4).toString('utf8'), reply.payload.readUInt32BE(0));
      else if (reply.replyType !== NBD_REP_ACK) throw new Error(`SET_META_CONTEXT failed: 0x${reply.replyType.toString(16)}`);
    }
  }
  client.write(optionBytes(NBD_OPT_GO, infoRequestData(options.exportName ?? '')));
  let size = -1;
  let flags = -1;
  for (const reply of await readOptionReplies(client)) {
    if (reply.replyType === NBD_REP_INFO && reply.payload.readUInt16BE(0) === NBD_INFO_EXPORT) {
      size = Number(reply.payload.readBigUInt64BE(2));
      flags = reply.payload.readUInt16BE(10);
    } else if (reply.replyType !== NBD_REP_INFO && reply.replyType !== NBD_REP_ACK) {
      throw new Error(`GO failed: 0x${reply.replyType.toString(16)} ${reply.payload.toString()}`);
    }
  }
  return { client, size, flags, contextIds };
}
