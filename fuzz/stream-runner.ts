// One stream from connect to close, within a deadline: the set-up its transport needs (none;
// greeting and STARTTLS by hand; a full PSK handshake), then the probe (probe.ts).

import { connect, type Socket } from 'node:net';
import { type ConnectionOptions, connect as tlsConnect } from 'node:tls';
import type { ListenAddress } from '../lib/server/listener.js';
import { RawClient } from '../test/helpers/raw-nbd/client.js';
import { greet } from '../test/helpers/raw-nbd/negotiate.js';
import { readOptionReply } from '../test/helpers/raw-nbd/replies.js';
import { NBD_REP_ACK } from '../test/helpers/raw-nbd/wire.js';
import { within } from '../test/helpers/wait.js';
import { NBD_OPT_STARTTLS, option } from './nbd-messages.js';
import { type ProbeResult, type ProbeTimings, probe } from './probe.js';
import type { StreamPlan } from './stream-plan.js';

export interface Target {
  readonly address: Extract<ListenAddress, { kind: 'tcp' }>;
  readonly tls: ConnectionOptions;
}

export interface StreamResult extends Omit<ProbeResult, 'problem'> {
  readonly plan: StreamPlan;
  /** Set-up failed, a probe check failed, or the deadline passed; null when clean. */
  readonly problem: string | null;
  readonly ms: number;
}

interface Connected {
  readonly stream: Socket;
  /** The TCP socket under `stream` (itself when not TLS). */
  readonly tcp: Socket;
}

function ignore(): void {
  // See afterTlsHandshake.
}

/** A TCP connection to the server, or an error after `timeoutMs`. */
function connectTcp(target: Target, timeoutMs: number, sockets: Socket[]): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: target.address.host, port: target.address.port });
    sockets.push(socket);
    socket.setNoDelay(true);
    const timer = setTimeout(() => reject(new Error(`connect timed out after ${timeoutMs} ms`)), timeoutMs);
    socket.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      resolve(socket);
    });
  });
}

/** Greeting and client flags, STARTTLS and its ACK, by hand; the plain socket is then the stream. */
async function afterStarttlsAck(target: Target, timeoutMs: number, sockets: Socket[]): Promise<Connected> {
  const socket = await connectTcp(target, timeoutMs, sockets);
  const client = RawClient.over(socket);
  await greet(client);
  client.write(option(NBD_OPT_STARTTLS));
  const ack = await readOptionReply(client, timeoutMs);
  if (ack.replyType !== NBD_REP_ACK) throw new Error(`STARTTLS refused: 0x${ack.replyType.toString(16)}`);
  return { stream: client.release(), tcp: socket };
}

/**
 * After the ACK, a PSK handshake on the same socket. Not raw-nbd/starttls.ts's startTlsClient,
 * which opens its TCP socket out of reach: a stream past its deadline must close every socket
 * it opened, and the fuzzer watches its own open files.
 */
async function afterTlsHandshake(target: Target, timeoutMs: number, sockets: Socket[]): Promise<Connected> {
  const { tcp } = await afterStarttlsAck(target, timeoutMs, sockets);
  // The TLS socket reports the connection's errors from here; one left on the TCP socket with no
  // listener would end the fuzzer (lib/server/tls-upgrade.ts guards the server side the same way).
  tcp.on('error', ignore);
  const secure = tlsConnect({ ...target.tls, socket: tcp });
  sockets.push(secure);
  await within(
    new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', resolve);
      secure.once('error', reject);
    }),
    timeoutMs,
    'the TLS handshake',
  );
  secure.removeAllListeners('error');
  return { stream: secure, tcp };
}

async function setUp(plan: StreamPlan, target: Target, timeoutMs: number, sockets: Socket[]): Promise<Connected> {
  switch (plan.transport) {
    case 'plain': {
      const socket = await connectTcp(target, timeoutMs, sockets);
      return { stream: socket, tcp: socket };
    }
    case 'starttls':
      return afterStarttlsAck(target, timeoutMs, sockets);
    case 'tls':
      return afterTlsHandshake(target, timeoutMs, sockets);
  }
}

function failed(plan: StreamPlan, problem: string, started: number): StreamResult {
  const ms = Date.now() - started;
  return { plan, received: 0, serverClosed: false, closedBeforeGreeting: false, finUnanswered: false, problem, ms };
}

/**
 * Run one stream; `onPort` learns its local port as soon as it is connected (the server's log
 * lines name the peer, so a line can be traced back to the stream).
 */
export async function runStream(
  plan: StreamPlan,
  target: Target,
  timings: ProbeTimings,
  deadlineMs: number,
  onPort: (port: number) => void,
): Promise<StreamResult> {
  const started = Date.now();
  const sockets: Socket[] = [];
  let timer: NodeJS.Timeout | undefined;
  const expired = new Promise<StreamResult>((resolve) => {
    timer = setTimeout(() => resolve(failed(plan, `stream did not finish within ${deadlineMs} ms`, started)), deadlineMs);
  });
  const work = (async (): Promise<StreamResult> => {
    let connected: Connected;
    try {
      connected = await setUp(plan, target, timings.greetingMs, sockets);
    } catch (err) {
      return failed(plan, `${plan.transport} set-up failed: ${err instanceof Error ? err.message : String(err)}`, started);
    }
    if (connected.stream.localPort !== undefined) onPort(connected.stream.localPort);
    const result = await probe(plan, connected.stream, connected.tcp, plan.transport === 'plain', timings);
    return { ...result, plan, ms: Date.now() - started };
  })();
  try {
    return await Promise.race([work, expired]);
  } finally {
    clearTimeout(timer);
    for (const socket of sockets) socket.destroy();
  }
}
