// The HTTP status endpoint (--metrics HOST:PORT): GET /metrics is the Prometheus exposition of a
// ServerMetrics registry, GET /sessions the live sessions as JSON (session-list.ts), both from a
// StatusSource: this process's (localStatus), or with --workers all processes' (workers.ts).
// Plain node:http with tight limits, as any client that reaches the port may be hostile; no auth.

import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { ServerMetrics } from './metrics.js';
import type { SessionRecord } from './server-events.js';
import { type SessionJson, toSessionJson } from './session-list.js';

/** What a slow or greedy HTTP client may take. A scrape is one small GET; Prometheus sends no body. */
export interface StatusLimits {
  /** Whole request headers must arrive within this (slowloris). */
  readonly headersTimeoutMs: number;
  /** The whole request, likewise. */
  readonly requestTimeoutMs: number;
  /** An idle keep-alive connection is closed after this. */
  readonly keepAliveTimeoutMs: number;
  /** Larger request headers get 431. */
  readonly maxHeaderBytes: number;
  /** HTTP connections at once; more are closed at accept. */
  readonly maxConnections: number;
}

export const STATUS_LIMITS: StatusLimits = {
  headersTimeoutMs: 5000,
  requestTimeoutMs: 10_000,
  keepAliveTimeoutMs: 5000,
  maxHeaderBytes: 8192,
  maxConnections: 32,
};

/** What the endpoint serves. */
export interface StatusSource {
  /** The Prometheus text exposition and its content type. */
  metrics(): Promise<{ readonly contentType: string; readonly text: string }>;
  /** The connections open now. */
  sessions(): Promise<readonly SessionJson[]>;
}

/** One process's metrics and sessions (`sessions`: RunningServer.sessions). */
export function localStatus(metrics: ServerMetrics, sessions: () => readonly SessionRecord[]): StatusSource {
  return {
    metrics: async () => ({ contentType: metrics.registry.contentType, text: await metrics.exposition() }),
    sessions: async () => {
      const now = Date.now();
      return sessions().map((record) => toSessionJson(record, now));
    },
  };
}

export interface StatusServerOptions {
  readonly host: string;
  readonly port: number;
  /** A socket bound elsewhere to host:port, to listen on instead (a worker's: shared-socket.ts). */
  readonly handle?: object;
  readonly source: StatusSource;
  readonly limits?: Partial<StatusLimits>;
}

export class StatusServer {
  readonly #http: Server;
  readonly #options: StatusServerOptions;
  #closing: Promise<void> | null = null;

  private constructor(options: StatusServerOptions) {
    this.#options = options;
    const limits = { ...STATUS_LIMITS, ...options.limits };
    this.#http = createServer(
      {
        headersTimeout: limits.headersTimeoutMs,
        requestTimeout: limits.requestTimeoutMs,
        maxHeaderSize: limits.maxHeaderBytes,
        // How often the timeouts above are checked (default 30 s, which would stretch them).
        connectionsCheckingInterval: Math.min(1000, limits.headersTimeoutMs),
      },
      (req, res) => this.#handle(req, res),
    );
    this.#http.keepAliveTimeout = limits.keepAliveTimeoutMs;
    this.#http.maxConnections = limits.maxConnections;
    // A socket idle this long (no request at all, or a stalled body) is destroyed.
    this.#http.setTimeout(limits.requestTimeoutMs);
  }

  /** Listen on host:port (0: any free port), or on `handle`; an address in use is an Error naming it. */
  static async start(options: StatusServerOptions): Promise<StatusServer> {
    const server = new StatusServer(options);
    await new Promise<void>((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException): void => {
        reject(Object.assign(new Error(`metrics endpoint ${options.host}:${options.port}: ${err.message}`), { code: err.code }));
      };
      server.#http.once('error', onError);
      const listening = (): void => {
        server.#http.off('error', onError);
        resolve();
      };
      if (options.handle !== undefined) server.#http.listen(options.handle, listening);
      else server.#http.listen({ host: options.host, port: options.port }, listening);
    });
    return server;
  }

  /** `http://HOST:PORT` as bound (the real port when 0 was asked). */
  get url(): string {
    const { address, port } = this.#http.address() as AddressInfo; // listening: an AddressInfo
    return `http://${address.includes(':') ? `[${address}]` : address}:${port}`;
  }

  /** Stop listening and drop every HTTP connection (a scrape in progress too). */
  close(): Promise<void> {
    this.#closing ??= new Promise<void>((resolve) => {
      this.#http.close(() => resolve());
      this.#http.closeAllConnections();
    });
    return this.#closing;
  }

  #handle(req: IncomingMessage, res: ServerResponse): void {
    if (req.method !== 'GET') {
      // Closed after the answer: a body the client sends is never read.
      send(res, 405, 'text/plain; charset=utf-8', 'only GET\n', { allow: 'GET', connection: 'close' });
      return;
    }
    const path = (req.url ?? '').split('?', 1)[0];
    if (path === '/metrics') {
      this.#options.source.metrics().then(
        ({ contentType, text }) => send(res, 200, contentType, text),
        (err: unknown) => send(res, 500, 'text/plain; charset=utf-8', `metrics failed: ${String(err)}\n`),
      );
    } else if (path === '/sessions') {
      this.#options.source.sessions().then(
        (list) => send(res, 200, 'application/json', `${JSON.stringify(list, null, 2)}\n`),
        (err: unknown) => send(res, 500, 'text/plain; charset=utf-8', `sessions failed: ${String(err)}\n`),
      );
    } else {
      send(res, 404, 'text/plain; charset=utf-8', 'not found: try /metrics or /sessions\n');
    }
  }
}

function send(res: ServerResponse, status: number, type: string, body: string, headers: Record<string, string> = {}): void {
  if (res.destroyed) return;
  res.writeHead(status, {
    'content-type': type,
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
    ...headers,
  });
  res.end(body);
}
