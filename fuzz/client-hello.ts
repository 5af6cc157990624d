// Real TLS ClientHellos to truncate and damage: node:tls, set up as the PSK client of the
// fuzzer's TLS streams, writes its first flight into an in-memory stream that never answers.

import { Duplex } from 'node:stream';
import { type ConnectionOptions, connect } from 'node:tls';
import { within } from '../test/helpers/wait.js';
import { type PskCredentials, pskClientOptions } from './psk.js';

/** The bytes node:tls sends first (the ClientHello record) with `options`. */
async function captureHello(options: ConnectionOptions): Promise<Buffer> {
  let resolveHello: (hello: Buffer) => void = () => undefined;
  const hello = new Promise<Buffer>((resolve) => {
    resolveHello = resolve;
  });
  const wire = new Duplex({
    read() {
      // The peer never answers.
    },
    write(chunk: Buffer, _encoding, callback) {
      resolveHello(Buffer.from(chunk));
      callback();
    },
  });
  const socket = connect({ ...options, socket: wire });
  socket.on('error', () => undefined); // destroyed below, mid-handshake
  try {
    return await within(hello, 5000, 'capturing a TLS ClientHello');
  } finally {
    socket.destroy();
    wire.destroy();
  }
}

/** ClientHellos for TLS 1.3 and for TLS 1.2, both offering the PSK suites the server accepts. */
export async function captureHellos(psk: PskCredentials): Promise<Buffer[]> {
  return [await captureHello(pskClientOptions(psk)), await captureHello(pskClientOptions(psk, 'TLSv1.2'))];
}
