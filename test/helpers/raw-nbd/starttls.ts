// The client side of NBD_OPT_STARTTLS for tests: fixed newstyle, STARTTLS, the ACK checked, then
// node:tls on the same socket; the result is a RawClient that speaks options over TLS.

import { type ConnectionOptions, type TLSSocket, connect as tlsConnect } from 'node:tls';
import type { ListenAddress } from '../../../lib/server/listener.js';
import { DEFAULT_TIMEOUT, within } from '../wait.js';
import { RawClient } from './client.js';
import { greet } from './negotiate.js';
import { readOptionReply } from './replies.js';
import { NBD_REP_ACK, optionBytes } from './wire.js';

const NBD_OPT_STARTTLS = 5;

export interface TlsClient {
  readonly client: RawClient;
  readonly socket: TLSSocket;
}

/** Connect, upgrade with STARTTLS using `options` (PSK or certificates), and return the TLS client. */
export async function startTlsClient(address: ListenAddress, options: ConnectionOptions): Promise<TlsClient> {
  const plain = await RawClient.connect(address);
  await greet(plain);
  plain.write(optionBytes(NBD_OPT_STARTTLS));
  const ack = await readOptionReply(plain);
  if (ack.replyType !== NBD_REP_ACK) {
    plain.destroy();
    throw new Error(`STARTTLS refused: 0x${ack.replyType.toString(16)} ${ack.payload.toString()}`);
  }
  const socket = tlsConnect({ ...options, socket: plain.release() });
  const secured = new Promise<void>((resolve, reject) => {
    socket.once('secureConnect', () => resolve());
    socket.once('error', reject);
  });
  try {
    await within(secured, DEFAULT_TIMEOUT, 'the TLS handshake');
  } catch (err) {
    socket.destroy();
    throw err;
  }
  return { client: RawClient.over(socket), socket };
}
