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
import { createLogger, type Logger, type LogLevel, levelFromEnv } from './log.js';
import { type ConnectionLimits, DEFAULT_LIMITS } from './server/connection.js';
import { type Export, type OverlayPolicy, overlayExportRegistry } from './server/exports.js';
import { type ListenAddress, NbdListener } from './server/listener.js';

export { type CheckReport, checkOverlay } from './block/overlay-check.js';
export { validateBlockSize } from './block/overlay-layout.js';
export type { LogLevel } from './log.js';
export type { ConnectionLimits } from './server/connection.js';
export type { OverlayPolicy } from './server/exports.js';
export { OVERLAY_POLICIES } from './server/exports.js';
export type { ListenAddress } from './server/listener.js';

/** Overlay block size when none is given: 4 KiB first writes need no copy-up from the base. */
export const DEFAULT_BLOCK_SIZE = 4096;
export const DEFAULT_PORT = 10809;

export interface ServerOptions {
  /** Path of the base image; opened read-only and never written. */
  readonly base: string;
  readonly listen: ListenAddress;
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
  readonly logLevel?: LogLevel;
  readonly logger?: Logger;
  readonly limits?: Partial<ConnectionLimits>;
}

export interface RunningServer {
  /** The NBD URI clients use, e.g. nbd://127.0.0.1:10809/golden. */
  readonly uri: string;
  readonly address: ListenAddress;
  readonly exportName: string;
  readonly overlayDir: string;
  readonly connectionCount: number;
  /** Stop accepting, finish in-flight requests, delete ephemeral overlays, close (keep) named ones, release the base. */
  stop(): Promise<void>;
}

/** The default export name for a base path: its file name without the extension. */
export function defaultExportName(basePath: string): string {
  const name = basename(basePath);
  const stem = name.slice(0, name.length - extname(name).length);
  return stem === '' ? name : stem;
}

export function defaultOverlayDir(): string {
  const uid = typeof process.getuid === 'function' ? process.getuid() : 0;
  return join(tmpdir(), `nbd-cow-${uid}`);
}

/** The URI a client uses for `address` and `exportName` (qemu/libnbd URI syntax). */
export function formatUri(address: ListenAddress, exportName: string): string {
  const name = encodeURIComponent(exportName);
  if (address.kind === 'unix') return `nbd+unix:///${name}?socket=${encodeURIComponent(address.path)}`;
  const host = address.host.includes(':') ? `[${address.host}]` : address.host;
  return `nbd://${host}:${address.port}/${name}`;
}

async function prepareOverlayDir(dir: string): Promise<void> {
  try {
    await mkdir(dir, { recursive: true, mode: 0o700 });
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
  const log = options.logger ?? createLogger(options.logLevel ?? levelFromEnv('info'));
  const blockSize = options.blockSize ?? DEFAULT_BLOCK_SIZE;
  validateBlockSize(blockSize);
  const overlayDir = resolve(options.overlayDir ?? defaultOverlayDir());
  const exportName = options.exportName ?? defaultExportName(options.base);
  const readOnly = options.readOnly ?? false;
  if (!readOnly) await prepareOverlayDir(overlayDir);
  const base = await openBase(options.base);
  try {
    if (!readOnly) {
      const removed = await sweepEphemeralOverlays(overlayDir);
      if (removed > 0) log.info(`removed ${removed} overlay file(s) left by a server that is gone`);
    }
    let overlaySeq = 0;
    const named = new NamedOverlays({ base, blockSize, dir: overlayDir, warn: (message) => log.warn(message) });
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
            }),
    };
    const registry = overlayExportRegistry({
      plain: exp,
      policy: options.overlays ?? 'both',
      ...(readOnly ? {} : { attachNamed: (name: string) => named.attach(exportName, name) }),
    });
    const listener = new NbdListener({
      registry,
      log,
      limits: { ...DEFAULT_LIMITS, ...options.limits },
    });
    const address = await listener.listen(options.listen);
    let stopping: Promise<void> | null = null;
    return {
      uri: formatUri(address, exportName),
      address,
      exportName,
      overlayDir,
      get connectionCount() {
        return listener.connectionCount;
      },
      stop: () => {
        stopping ??= listener
          .stop()
          .then(() => named.closeAll())
          .finally(() => base.close());
        return stopping;
      },
    };
  } catch (err) {
    await base.close();
    throw err;
  }
}
