// ServerOptions, the one-base, one-listener form of a server's configuration that the command
// line's flags and the Node API's startServer take, and how it becomes a ServerConfig. Apart
// from lib/index.ts, so the command line loads it without the rest of the API (the config
// file's YAML parser, the metrics' Prometheus client), which a plain `serve` does not use.

import { resolve } from 'node:path';
import type { ServerConfig } from './config/server-config.js';
import { DEFAULT_BLOCK_SIZE, defaultExportName } from './defaults.js';
import { createLogger, type LogFormat, type Logger, type LogLevel, levelFromEnv } from './log.js';
import type { RemoteOptions } from './remote/remote-options.js';
import type { AccessOptions } from './server/access-options.js';
import type { ConnectionLimits } from './server/connection-limits.js';
import type { NamedOverlayOwner, OverlayPolicy } from './server/exports.js';
import type { ServerEvents } from './server/server-events.js';
import type { TlsMode } from './server/tls-credentials.js';
import { type RunningServer, startConfiguredServer } from './start-server.js';

/** What startServer takes: the base and its export, and (AccessOptions) where and to whom it listens. */
export interface ServerOptions extends AccessOptions {
  /** Path of the base image, or an http:// or https:// URL of one; opened read-only and never written. */
  readonly base: string;
  /** A remote base: where and how much to cache, prefetch, timeouts and retries (lib/remote/). */
  readonly remote?: RemoteOptions;
  /** Frozen overlays (`nbd-cow overlay freeze`) stacked on the base, bottom first; clients' overlays sit on the last. */
  readonly layers?: readonly string[];
  /** Export name; default: the base file's name without its extension. */
  readonly exportName?: string;
  readonly description?: string;
  /** Where overlay files live; default: a directory under the OS temp dir. */
  readonly overlayDir?: string;
  /** Overlay block size: a power of two from 512 B to 1 MiB. */
  readonly blockSize?: number;
  /** Serve the base read-only, with no overlay at all. */
  readonly readOnly?: boolean;
  /** Which overlays clients may use: `EXPORT` (throwaway), `EXPORT@NAME` (named), or both (default). */
  readonly overlays?: OverlayPolicy;
  /** Most bytes of data one overlay (throwaway or named) may hold; past it writes fail with ENOSPC. */
  readonly maxOverlaySize?: number;
  /** Most bytes of data every overlay this server has open may hold together; past it writes fail with ENOSPC. */
  readonly maxOverlayDirSize?: number;
  /**
   * Compare every whole block a WRITE stores with the base's and store none that is equal (the
   * block goes back to the base state, its space given back). Default false: it reads the base
   * under each such write (README, Performance). Whole blocks of zeros are never stored either way.
   */
  readonly elideBaseMatches?: boolean;
  /**
   * Bytes all clients together may hold in the server: READ and WRITE payloads in flight and
   * replies not yet read (default 256 MiB; at least MAX_PAYLOAD, the largest request).
   */
  readonly bufferMemory?: number;
  /** Who may open `EXPORT@NAME`: anyone (default), or only the client whose TLS identity is NAME. */
  readonly namedOverlayOwner?: NamedOverlayOwner;
  /**
   * TLS (NBD_OPT_STARTTLS), as nbdkit's flags: `mode` off (default), on (the client chooses) or
   * require; with on/require exactly one of `certificates` (a directory with ca-cert.pem,
   * server-cert.pem, server-key.pem) or `pskFile` (`username:hexkey` lines); `verifyPeer`
   * (certificates only) asks clients for a certificate signed by ca-cert.pem. Loaded and checked
   * at start: a missing or bad file fails startServer.
   */
  readonly tls?: {
    readonly mode: TlsMode;
    readonly certificates?: string;
    readonly pskFile?: string;
    readonly verifyPeer?: boolean;
  };
  readonly logLevel?: LogLevel;
  /** `text` (default): `nbd-cow: [level: ]message` lines on stderr; `json`: pino's JSON lines. Unused with `logger`. */
  readonly logFormat?: LogFormat;
  readonly logger?: Logger;
  readonly limits?: Partial<ConnectionLimits>;
  /** Observers of connections and requests (server-events.ts); the CLI's logs and metrics are some. */
  readonly events?: readonly ServerEvents[];
  /**
   * Serve Prometheus metrics (GET /metrics) and the live sessions as JSON (GET /sessions) over
   * HTTP on host:port (port 0: a free one; RunningServer.metricsUri says which). Default: off.
   */
  readonly metrics?: { readonly host: string; readonly port: number };
}

/** The configuration ServerOptions mean: one listener and one export, as the command line's flags. */
export function serverConfigFromOptions(options: ServerOptions): ServerConfig {
  const readOnly = options.readOnly ?? false;
  const tlsMode = options.tls?.mode ?? 'off';
  return {
    source: '',
    listen: [
      {
        address: options.listen,
        ...(options.socketMode !== undefined ? { socketMode: options.socketMode } : {}),
        ...(options.socketGroup !== undefined ? { socketGroup: options.socketGroup } : {}),
      },
    ],
    exports: [
      {
        name: options.exportName ?? defaultExportName(options.base),
        base: options.base,
        ...(options.remote !== undefined ? { remote: options.remote } : {}),
        ...(options.layers !== undefined && options.layers.length > 0 ? { layers: options.layers.map((l) => resolve(l)) } : {}),
        ...(options.description !== undefined ? { description: options.description } : {}),
        readOnly,
        blockSize: options.blockSize ?? DEFAULT_BLOCK_SIZE,
        overlays: options.overlays ?? 'both',
        ...(options.overlayDir !== undefined ? { overlayDir: resolve(options.overlayDir) } : {}),
        ...(options.maxOverlaySize !== undefined ? { maxOverlaySize: options.maxOverlaySize } : {}),
        ...(options.maxOverlayDirSize !== undefined ? { maxOverlayDirSize: options.maxOverlayDirSize } : {}),
        ...(options.elideBaseMatches !== undefined ? { elideBaseMatches: options.elideBaseMatches } : {}),
        namedOverlayOwner: options.namedOverlayOwner ?? 'anyone',
        requireTls: tlsMode === 'require',
      },
    ],
    ...(options.tls !== undefined ? { tls: options.tls } : {}),
    ...(options.allow !== undefined ? { allow: options.allow } : {}),
    ...(options.maxConnections !== undefined ? { maxConnections: options.maxConnections } : {}),
    ...(options.bufferMemory !== undefined ? { bufferMemory: options.bufferMemory } : {}),
    ...(options.user !== undefined ? { user: options.user } : {}),
    ...(options.group !== undefined ? { group: options.group } : {}),
    ...(options.metrics !== undefined ? { metrics: options.metrics } : {}),
  };
}

/** Serve one base as one export on one listener (ServerOptions); startConfiguredServer serves a whole configuration. */
export function startServer(options: ServerOptions): Promise<RunningServer> {
  const log =
    options.logger ?? createLogger(options.logLevel ?? levelFromEnv('info'), undefined, { format: options.logFormat ?? 'text' });
  return startConfiguredServer(serverConfigFromOptions(options), {
    log,
    ...(options.events !== undefined ? { events: options.events } : {}),
    ...(options.limits !== undefined ? { limits: options.limits } : {}),
  });
}
