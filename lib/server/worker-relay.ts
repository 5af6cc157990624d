// Relaying a TLS connection to the worker that holds its named overlay (hand-over.ts,
// doc/workers.md). A TLS session cannot move between processes, so the worker that holds it
// keeps it and pipes its plain bytes over a unix socket to the owner: first a relay header (the
// replay: the options after STARTTLS, the GO, the TLS identity and client flags), then the
// client's stream as it comes, both ways. The owner serves what arrives on that socket as the
// connection.
//
// Each worker listens on its own socket in a private directory (mode 0700, made after the worker
// gave up root, so its siblings, running as the same user, can reach it and nobody else can).

import { mkdtemp, rm } from 'node:fs/promises';
import { connect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Logger } from '../log.js';
import { decodeRelayHeader, encodeRelayHeader, type Replay } from './hand-over.js';

/** How long a relayed connection may take to send its header. */
const HEADER_TIMEOUT_MS = 10_000;

export interface RelayServer {
  /** The unix socket siblings connect to. */
  readonly path: string;
  close(): Promise<void>;
}

/** Listen for relayed connections; `serve` gets each one's socket (header read, rest unread) and replay. */
export async function startRelayServer(serve: (socket: Socket, replay: Replay) => void, log: Logger): Promise<RelayServer> {
  const dir = await mkdtemp(join(tmpdir(), `nbd-cow-relay-${process.pid}-`));
  const path = join(dir, 's');
  const server: Server = createServer({ allowHalfOpen: true }, (socket) => readHeader(socket, serve, log));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return {
    path,
    close: async () => {
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await rm(dir, { recursive: true, force: true });
    },
  };
}

function readHeader(socket: Socket, serve: (socket: Socket, replay: Replay) => void, log: Logger): void {
  let received = Buffer.alloc(0);
  const timer = setTimeout(() => fail('no relay header in time'), HEADER_TIMEOUT_MS);
  const fail = (why: string): void => {
    clearTimeout(timer);
    log.warn(`relayed connection dropped: ${why}`);
    socket.destroy();
  };
  const onData = (chunk: Buffer): void => {
    received = Buffer.concat([received, chunk]);
    let header: ReturnType<typeof decodeRelayHeader>;
    try {
      header = decodeRelayHeader(received);
    } catch (err) {
      fail((err as Error).message);
      return;
    }
    if (header === null) return;
    clearTimeout(timer);
    socket.off('data', onData);
    socket.off('error', onError);
    socket.pause();
    // Client bytes that came with the header go back, for the connection to read.
    if (header.used < received.length) socket.unshift(received.subarray(header.used));
    serve(socket, header.replay);
  };
  const onError = (err: Error): void => fail(err.message);
  socket.on('data', onData);
  socket.on('error', onError);
}

/**
 * Relay `client` (a TLS connection, paused, its parsed bytes in `replay`) to the relay socket at
 * `path`; `failed` (and `client` destroyed) if it cannot be reached.
 */
export function relayTo(path: string, client: Socket, replay: Replay, events: { failed(why: string): void }): void {
  const owner = connect({ path, allowHalfOpen: true });
  let up = false;
  const end = (): void => {
    client.destroy();
    owner.destroy();
  };
  owner.once('connect', () => {
    up = true;
    owner.setNoDelay(true);
    owner.write(encodeRelayHeader(replay));
    client.pipe(owner);
    owner.pipe(client);
    client.resume();
  });
  owner.on('error', (err) => {
    end();
    if (!up) events.failed(err.message);
  });
  client.on('error', end);
  client.on('close', () => owner.destroy());
  owner.on('close', () => client.destroy());
}
