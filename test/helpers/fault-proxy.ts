// A reverse proxy between the client under test (lib/remote/) and a real HTTP server (nginx.ts)
// that misbehaves on demand: it delays, answers a status of its own, resets the connection,
// cuts a body in half or never answers; it can go down (connections refused) and come back on
// the same port. Otherwise it forwards each request as it came (method, path, Range, If-Match,
// ...) over keep-alive connections and streams the answer back, counting what it relayed.

import { Agent, createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import type { Test } from 'tap';
import { within } from './wait.js';

/** What the proxy does with one request. */
export type Fault =
  | { readonly kind: 'none' }
  /** Wait `ms`, then forward. */
  | { readonly kind: 'delay'; readonly ms: number }
  /** Answer `status` with a short text body; nothing is forwarded. */
  | { readonly kind: 'status'; readonly status: number }
  /** Reset the client's connection (TCP RST) without answering. */
  | { readonly kind: 'reset' }
  /** Forward; send the upstream's status and headers, then the first half of its body, then close the connection. */
  | { readonly kind: 'truncate' }
  /** Never answer: the connection stays open until the client gives up or the proxy goes down. */
  | { readonly kind: 'hang' };

export interface ProxyStats {
  /** Requests that reached the proxy, faulted or not. */
  requests: number;
  /** Upstream body bytes relayed to clients (a truncated answer counts its half). */
  bytes: number;
}

export interface FaultProxy {
  /** The port, the same across goDown and comeBack. */
  readonly port: number;
  /** `http://127.0.0.1:PORT/path`. */
  url(path: string): string;
  /** The fault applied to every request from now on (`{ kind: 'none' }` at start). */
  setFault(fault: Fault): void;
  /** Apply `fault` to the next `count` requests, then the standing fault again. Calls queue up in order. */
  faultNext(count: number, fault: Fault): void;
  /** Live counters (this object is updated in place). */
  readonly stats: ProxyStats;
  /** Stop listening and drop every open connection: connections are refused until comeBack(). */
  goDown(): Promise<void>;
  /** Listen again on the same port. */
  comeBack(): Promise<void>;
  /** Close everything (also done in t.teardown). Idempotent. */
  stop(): Promise<void>;
}

const CLOSE_TIMEOUT_MS = 10_000;

// Headers of one connection, not of the message: never forwarded either way.
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'proxy-authenticate',
  'proxy-authorization',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

function endToEnd(headers: IncomingMessage['headers']): Record<string, string | string[]> {
  const kept: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value !== undefined && !HOP_BY_HOP.has(name)) kept[name] = value;
  }
  return kept;
}

/** Start a proxy to `upstream` (`http://127.0.0.1:PORT`) on an ephemeral 127.0.0.1 port; stopped in t.teardown. */
export async function startFaultProxy(t: Test, upstream: string): Promise<FaultProxy> {
  const target = new URL(upstream);
  if (target.protocol !== 'http:') throw new Error(`the fault proxy forwards to http only, not ${upstream}`);
  const upstreamAgent = new Agent({ keepAlive: true });
  const stats: ProxyStats = { requests: 0, bytes: 0 };
  let standing: Fault = { kind: 'none' };
  const queued: { remaining: number; fault: Fault }[] = [];
  const sockets = new Set<Socket>();
  const timers = new Set<NodeJS.Timeout>();
  let stopped = false;

  function nextFault(): Fault {
    const head = queued[0];
    if (head === undefined) return standing;
    head.remaining--;
    if (head.remaining <= 0) queued.shift();
    return head.fault;
  }

  function forward(req: IncomingMessage, res: ServerResponse, truncate: boolean, retried = false): void {
    const upstreamReq = httpRequest({
      host: target.hostname,
      port: target.port,
      method: req.method,
      path: req.url,
      headers: { ...endToEnd(req.headers), host: target.host },
      agent: upstreamAgent,
    });
    // The client went away (or the proxy went down) before the answer was through: drop it upstream too.
    const dropUpstream = (): void => {
      if (!res.writableFinished) upstreamReq.destroy();
    };
    res.once('close', dropUpstream);
    upstreamReq.once('error', (err: NodeJS.ErrnoException) => {
      res.off('close', dropUpstream);
      // A pooled upstream connection the server had closed (nginx closes one after a 412 while
      // saying keep-alive): a bodiless request is sent again, on a new connection if need be.
      const bodiless = req.method === 'GET' || req.method === 'HEAD';
      if (upstreamReq.reusedSocket && err.code === 'ECONNRESET' && bodiless && !retried && !res.destroyed) {
        forward(req, res, truncate, true);
      } else if (res.headersSent) res.destroy();
      else if (!res.destroyed)
        res.writeHead(502, { 'content-type': 'text/plain' }).end(`fault proxy: upstream: ${err.message}\n`);
    });
    upstreamReq.once('response', (answer) => {
      res.writeHead(answer.statusCode ?? 502, answer.statusMessage, endToEnd(answer.headers));
      if (truncate) sendHalf(answer, res);
      else {
        answer.on('data', (chunk: Buffer) => (stats.bytes += chunk.length));
        answer.pipe(res);
      }
    });
    if (retried) upstreamReq.end();
    else req.pipe(upstreamReq);
  }

  /** The first half of the upstream's body (read whole first), then the connection closed. */
  function sendHalf(answer: IncomingMessage, res: ServerResponse): void {
    const chunks: Buffer[] = [];
    answer.on('data', (chunk: Buffer) => chunks.push(chunk));
    answer.once('end', () => {
      if (res.destroyed) return;
      const body = Buffer.concat(chunks);
      const half = body.subarray(0, Math.floor(body.length / 2));
      stats.bytes += half.length;
      res.flushHeaders();
      res.write(half, () => res.socket?.destroy());
    });
  }

  function handle(req: IncomingMessage, res: ServerResponse): void {
    stats.requests++;
    const fault = nextFault();
    switch (fault.kind) {
      case 'none':
        forward(req, res, false);
        return;
      case 'truncate':
        forward(req, res, true);
        return;
      case 'delay': {
        const timer = setTimeout(() => {
          timers.delete(timer);
          if (!res.destroyed) forward(req, res, false);
        }, fault.ms);
        timers.add(timer);
        return;
      }
      case 'status':
        res.writeHead(fault.status, { 'content-type': 'text/plain' }).end(`fault proxy: status ${fault.status}\n`);
        return;
      case 'reset':
        req.socket.resetAndDestroy();
        return;
      case 'hang':
        return; // the socket is in `sockets`: goDown and stop close it
    }
  }

  const server: Server = createServer(handle);
  // Idle keep-alive connections stay open as long as nginx's (75 s) would: a client's pooled socket
  // is not closed under it between requests of a test.
  server.keepAliveTimeout = 75_000;
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });

  function listen(port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, '127.0.0.1', () => {
        server.off('error', reject);
        const address = server.address();
        resolve(address !== null && typeof address === 'object' ? address.port : 0);
      });
    });
  }

  async function goDown(): Promise<void> {
    for (const timer of timers) clearTimeout(timer);
    timers.clear();
    const closed = server.listening ? new Promise<void>((resolve) => server.close(() => resolve())) : Promise.resolve();
    for (const socket of sockets) socket.destroy();
    await within(closed, CLOSE_TIMEOUT_MS, 'the fault proxy closing');
  }

  async function stop(): Promise<void> {
    if (stopped) return;
    stopped = true;
    await goDown();
    upstreamAgent.destroy();
  }

  const port = await listen(0);
  t.teardown(stop);
  return {
    port,
    url: (path) => `http://127.0.0.1:${port}${path.startsWith('/') ? '' : '/'}${path}`,
    setFault: (fault) => {
      standing = fault;
    },
    faultNext: (count, fault) => {
      if (count > 0) queued.push({ remaining: count, fault });
    },
    stats,
    goDown,
    comeBack: async () => {
      if (stopped) throw new Error('the fault proxy was stopped');
      if (!server.listening) await listen(port);
    },
    stop,
  };
}
