// Public API: start an nbd-cow server from Node.
//
//   const server = await startServer({ base: 'golden.img', listen: { kind: 'tcp', host: '127.0.0.1', port: 0 } });
//   console.log(server.uri); // nbd://127.0.0.1:40123/golden
//   await server.stop();     // finishes in-flight requests, deletes every ephemeral overlay
//
// Clients reach `golden` (a private throwaway overlay per connection) and `golden@NAME` (the
// named overlay NAME, kept in the overlay directory and shared by its connections), as the
// overlay policy allows.

import { access, constants as fsConstants, mkdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, extname, join, resolve } from 'node:path';
import { type BaseImage, openBase } from './block/base-image.js';
import { CowDevice, ephemeralOverlayName, sweepEphemeralOverlays } from './block/cow-device.js';
import type { BlockDevice } from './block/device.js';
import { NamedOverlays } from './block/named-overlays.js';
import { validateBlockSize } from './block/overlay-layout.js';
import { spaceLimits } from './block/space-budget.js';
import { createLogger, type LogFormat, type Logger, type LogLevel, levelFromEnv } from './log.js';
import { MAX_PAYLOAD } from './protocol/constants.js';
import { type AccessOptions, resolveAccess } from './server/access-options.js';
import { type ConnectionLimits, DEFAULT_LIMITS } from './server/connection-limits.js';
import { type Export, type NamedOverlayOwner, type OverlayPolicy, overlayExportRegistry } from './server/exports.js';
import { type ListenAddress, NbdListener } from './server/listener.js';
import { MemoryBudget } from './server/memory-budget.js';
import { ServerMetrics } from './server/metrics.js';
import { dropPrivileges, handOverCreatedDirs, type PrivilegeTarget } from './server/privileges.js';
import { combineEvents, type ServerEvents, type SessionRecord } from './server/server-events.js';
import { StatusServer } from './server/status-server.js';
import { loadTlsSettings, type TlsMode } from './server/tls-credentials.js';

export { type CheckReport, checkOverlay } from './block/overlay-check.js';
export { validateBlockSize } from './block/overlay-layout.js';
export { LOG_FORMATS, type LogFormat, type LogLevel } from './log.js';
export { MAX_PAYLOAD } from './protocol/constants.js';
export type { AccessOptions } from './server/access-options.js';
export type { ConnectionLimits } from './server/connection-limits.js';
export type { NamedOverlayOwner, OverlayPolicy } from './server/exports.js';
export { NAMED_OVERLAY_OWNERS, OVERLAY_POLICIES } from './server/exports.js';
export type { ListenAddress } from './server/listener.js';
export { ServerMetrics } from './server/metrics.js';
export type { ServerEvents, SessionRecord } from './server/server-events.js';
export { TLS_MODES, type TlsMode } from './server/tls-credentials.js';

/** Overlay block size when none is given: 4 KiB first writes need no copy-up from the base. */
export const DEFAULT_BLOCK_SIZE = 4096;
export const DEFAULT_PORT = 10809;
/** What clients together may buffer in the server when ServerOptions.bufferMemory is not given. */
export const DEFAULT_BUFFER_MEMORY = 256 * 1024 * 1024;
/**
 * Connections served at once when ServerOptions.maxConnections is not given. A cap bounds what a
 * flood of connections can take (make bench measured 90 KiB of RSS per writing connection, and
 * each holds a socket and an overlay file descriptor): 1024 is about 90 MiB and 2,050 fds, and
 * still admits the bench's scale run (1,000 connections plus a probe session).
 */
export const DEFAULT_MAX_CONNECTIONS = 1024;

/** What startServer takes: the base and its export, and (AccessOptions) where and to whom it listens. */
export interface ServerOptions extends AccessOptions {
  /** Path of the base image; opened read-only and never written. */
  readonly base: string;
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

export interface RunningServer {
  /** The NBD URI clients use, e.g. nbd://127.0.0.1:10809/golden. */
  readonly uri: string;
  readonly address: ListenAddress;
  readonly exportName: string;
  readonly overlayDir: string;
  readonly connectionCount: number;
  /** Bytes clients hold in the server now: payloads in flight and replies not yet read. */
  readonly bufferedBytes: number;
  /** The connections open now: peer, export, overlay, TLS, requests and bytes. */
  sessions(): SessionRecord[];
  /** With ServerOptions.metrics: where the metrics are, e.g. http://127.0.0.1:9810/metrics (/sessions beside it); else null. */
  readonly metricsUri: string | null;
  /** Stop accepting, finish in-flight requests, delete ephemeral overlays, close (keep) named ones, release the base. */
  stop(): Promise<void>;
}

/** The default export name for a base path: its file name without the extension. */
export function defaultExportName(basePath: string): string {
  const name = basename(basePath);
  const stem = name.slice(0, name.length - extname(name).length);
  return stem === '' ? name : stem;
}

/** `$TMPDIR/nbd-cow-UID` for the user the server runs as (`uid`: the one it will become). */
export function defaultOverlayDir(uid = typeof process.getuid === 'function' ? process.getuid() : 0): string {
  return join(tmpdir(), `nbd-cow-${uid}`);
}

/** The URI a client uses for `address` and `exportName` (qemu/libnbd URI syntax; nbds: with TLS). */
export function formatUri(address: ListenAddress, exportName: string, tls = false): string {
  const name = encodeURIComponent(exportName);
  const scheme = tls ? 'nbds' : 'nbd';
  if (address.kind === 'unix') return `${scheme}+unix:///${name}?socket=${encodeURIComponent(address.path)}`;
  const host = address.host.includes(':') ? `[${address.host}]` : address.host;
  return `${scheme}://${host}:${address.port}/${name}`;
}

/** Make `dir`; what start-up creates belongs to the user the server will become (`target`). */
async function prepareOverlayDir(dir: string, target: PrivilegeTarget | null): Promise<void> {
  try {
    const firstCreated = await mkdir(dir, { recursive: true, mode: 0o700 });
    if (target !== null) await handOverCreatedDirs(dir, firstCreated, target);
    await access(dir, fsConstants.W_OK | fsConstants.X_OK);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code ?? '';
    throw Object.assign(new Error(`overlay directory ${dir} is not usable: ${code || String(err)}`), { code });
  }
}

/** A view of the shared base for one read-only connection: closing it keeps the base open. */
function readOnlyView(base: BaseImage): BlockDevice {
  return {
    size: base.size,
    writable: false,
    read: (offset, dest) => base.read(offset, dest),
    write: (offset, data, options) => base.write(offset, data, options),
    zero: (offset, length, options) => base.zero(offset, length, options),
    trim: (offset, length, options) => base.trim(offset, length, options),
    flush: () => base.flush(),
    cache: (offset, length) => base.cache(offset, length),
    extents: (offset, length, max) => base.extents(offset, length, max),
    close: async () => undefined,
  };
}

export async function startServer(options: ServerOptions): Promise<RunningServer> {
  const log =
    options.logger ?? createLogger(options.logLevel ?? levelFromEnv('info'), undefined, { format: options.logFormat ?? 'text' });
  const blockSize = options.blockSize ?? DEFAULT_BLOCK_SIZE;
  validateBlockSize(blockSize);
  const access = await resolveAccess(options, options.maxConnections ?? DEFAULT_MAX_CONNECTIONS, log);
  const overlayDir = resolve(options.overlayDir ?? defaultOverlayDir(access.target?.uid));
  const exportName = options.exportName ?? defaultExportName(options.base);
  const readOnly = options.readOnly ?? false;
  const bufferMemory = options.bufferMemory ?? DEFAULT_BUFFER_MEMORY;
  if (!Number.isSafeInteger(bufferMemory) || bufferMemory < MAX_PAYLOAD) {
    throw new Error(`buffer memory ${bufferMemory} is less than the largest request (${MAX_PAYLOAD} bytes)`);
  }
  const namedOwner = options.namedOverlayOwner ?? 'anyone';
  const space = spaceLimits(options.maxOverlaySize, options.maxOverlayDirSize);
  const tls = await loadTlsSettings(options.tls);
  if (namedOwner === 'tls-identity' && tls.mode === 'off') {
    throw new Error('named overlays owned by the TLS identity need TLS: add --tls require (or on) with credentials');
  }
  if (!readOnly) await prepareOverlayDir(overlayDir, access.target);
  const base = await openBase(options.base);
  try {
    if (!readOnly) {
      const removed = await sweepEphemeralOverlays(overlayDir);
      if (removed > 0) log.info(`removed ${removed} overlay file(s) left by a server that is gone`);
    }
    let overlaySeq = 0;
    const metrics = options.metrics === undefined ? null : new ServerMetrics();
    const events = combineEvents([...(options.events ?? []), ...(metrics === null ? [] : [metrics])]);
    const named = new NamedOverlays({
      base,
      blockSize,
      dir: overlayDir,
      warn: (message) => log.warn(message),
      ...(space !== undefined ? { space } : {}),
      events,
    });
    const exp: Export = {
      name: exportName,
      description: options.description ?? `${basename(options.base)} with a private copy-on-write overlay`,
      size: base.size,
      readOnly,
      preferredBlockSize: blockSize,
      openDevice: async () =>
        readOnly
          ? readOnlyView(base)
          : new CowDevice({
              base,
              blockSize,
              overlayPath: join(overlayDir, ephemeralOverlayName(process.pid, ++overlaySeq)),
              ...(space !== undefined ? { space } : {}),
              events,
            }),
    };
    const registry = overlayExportRegistry({
      plain: exp,
      policy: options.overlays ?? 'both',
      namedOwner,
      ...(readOnly ? {} : { attachNamed: (name: string) => named.attach(exportName, name) }),
    });
    const limits = { ...DEFAULT_LIMITS, ...options.limits };
    const budget = new MemoryBudget({ limit: bufferMemory, stallMs: limits.replyStallMs });
    const listener = new NbdListener({
      registry,
      log,
      limits,
      budget,
      tls,
      admission: access.admission,
      ...(access.socketPermissions !== undefined ? { socketPermissions: access.socketPermissions } : {}),
      events,
    });
    const address = await listener.listen(options.listen);
    // In the same turn as listen(): no client is accepted before the switch.
    if (access.target !== null) {
      try {
        dropPrivileges(access.target, readOnly ? undefined : overlayDir);
      } catch (err) {
        await listener.stop();
        throw err;
      }
      log.info(`running as ${access.target.who}`);
    }
    // After the switch: the HTTP parser never runs as root.
    let status: StatusServer | null = null;
    if (options.metrics !== undefined && metrics !== null) {
      try {
        status = await StatusServer.start({ ...options.metrics, metrics, sessions: () => listener.sessions() });
      } catch (err) {
        await listener.stop().then(() => named.closeAll());
        throw err;
      }
    }
    let stopping: Promise<void> | null = null;
    return {
      // Under --tls require only a TLS client gets in: the URI says so (as nbdkit's does).
      uri: formatUri(address, exportName, tls.mode === 'require'),
      address,
      exportName,
      overlayDir,
      get connectionCount() {
        return listener.connectionCount;
      },
      get bufferedBytes() {
        return budget.used;
      },
      sessions: () => listener.sessions(),
      metricsUri: status === null ? null : `${status.url}/metrics`,
      stop: () => {
        stopping ??= Promise.all([status?.close(), listener.stop().then(() => named.closeAll())])
          .then(() => undefined)
          .finally(() => base.close());
        return stopping;
      },
    };
  } catch (err) {
    await base.close();
    throw err;
  }
}
