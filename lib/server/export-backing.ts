// What one configured export stands on: its base image, opened once and shared read-only by
// every connection, the directory of its overlays and the named overlays open in it. The
// policy around it (description, overlay kinds, who may connect) lives in the Export built on
// top (configured-exports.ts), so a reload that changes only policy keeps the backing and its
// open overlays. A backing that a reload replaced is retired: it closes once its last device
// is closed, and live connections on it go on undisturbed until then.

import { join } from 'node:path';
import type { BaseImage } from '../block/base-image.js';
import { CowDevice } from '../block/cow-device.js';
import type { BlockDevice } from '../block/device.js';
import { ephemeralOverlayName } from '../block/ephemeral.js';
import { InlineIoGuard } from '../block/inline-io-guard.js';
import { openImageStack } from '../block/layer-stack.js';
import { NamedOverlays } from '../block/named-overlays.js';
import type { OverlayEvents } from '../block/overlay-events.js';
import { lockHolder, lockHolderOf } from '../block/overlay-lock.js';
import { parentPid } from '../block/process-alive.js';
import type { SpaceLimits } from '../block/space-budget.js';
import { NBD_REP_ERR_UNKNOWN } from '../protocol/constants.js';
import { OptionError } from '../protocol/errors.js';
import { openBaseImage } from '../remote/open-base-image.js';
import { RemoteBase } from '../remote/remote-base.js';
import { RemoteBaseElsewhere } from '../remote/remote-base-elsewhere.js';
import type { RemoteOptions } from '../remote/remote-options.js';
import { HandOver } from './hand-over.js';

export interface BackingOptions {
  /** The export's name: its named overlays' files are `named-<name>@<overlay>.cow`. */
  readonly exportName: string;
  readonly basePath: string;
  /** Frozen overlays on the base, bottom first (layer-stack.ts); the overlays sit on the last. */
  readonly layers: readonly string[];
  readonly blockSize: number;
  /** Serve the base alone: no overlay, no overlay directory. */
  readonly readOnly: boolean;
  readonly overlayDir: string;
  readonly space: SpaceLimits | undefined;
  /** Whole blocks a WRITE makes equal to the base's go back to "base" (CowDeviceOptions.elideBaseMatches). */
  readonly elideBaseMatches: boolean;
  readonly events: OverlayEvents;
  readonly warn: (message: string) => void;
  readonly info?: (message: string) => void;
  /** How a remote base (an http:// or https:// basePath) is fetched and cached. */
  readonly remote?: RemoteOptions;
  /** A worker's: whether a named overlay's lock holder is a sibling worker (the connection moves there). */
  readonly siblingWorker?: (pid: number) => boolean;
  /** Ephemeral overlay file names are `eph-<pid>-<n>.cow`: n from here, unique in the process. */
  readonly nextOverlayNumber: () => number;
}

export class ExportBacking {
  readonly options: BackingOptions;
  readonly base: BaseImage;
  /** The remote base at the bottom of `base`, when basePath is a URL (for its metrics). */
  readonly remote: RemoteBase | undefined;
  /** A worker's remote base whose block cache a sibling holds: connections move there. */
  readonly #elsewhere: RemoteBaseElsewhere | undefined;
  readonly #named: NamedOverlays;
  #openDevices = 0;
  #retired = false;
  #closing: Promise<void> | null = null;
  #resolveClosed: () => void = () => undefined;
  /** Resolves once close() has closed the named overlays and the base. */
  readonly #closed = new Promise<void>((resolve) => {
    this.#resolveClosed = resolve;
  });

  private constructor(options: BackingOptions, base: BaseImage, remote: RemoteBase | RemoteBaseElsewhere | undefined) {
    this.options = options;
    this.base = base;
    this.remote = remote instanceof RemoteBase ? remote : undefined;
    this.#elsewhere = remote instanceof RemoteBaseElsewhere ? remote : undefined;
    this.#named = new NamedOverlays({
      base,
      blockSize: options.blockSize,
      dir: options.overlayDir,
      warn: options.warn,
      ...(options.space !== undefined ? { space: options.space } : {}),
      elideBaseMatches: options.elideBaseMatches,
      events: options.events,
      ...(options.siblingWorker !== undefined ? { reachable: options.siblingWorker } : {}),
    });
  }

  /**
   * Open the base and its layers (errors name the path and the cause). In a worker, a remote
   * base whose block cache a sibling worker holds is opened as a RemoteBaseElsewhere: the
   * connections to it move to that worker (#moveToCacheHolder).
   */
  static async open(options: BackingOptions): Promise<ExportBacking> {
    const log = { warn: options.warn, info: options.info ?? (() => undefined) };
    let remote: RemoteBase | RemoteBaseElsewhere | undefined;
    // A worker's siblings are the primary's other children (the list of their pids comes later).
    const remoteOptions: RemoteOptions | undefined =
      options.siblingWorker === undefined
        ? options.remote
        : { ...options.remote, cacheHeldBySibling: (holder) => parentPid(holder) === process.ppid };
    const base = await openImageStack(options.basePath, options.layers, async (path) => {
      const bottom = await openBaseImage(path, remoteOptions, log);
      if (bottom instanceof RemoteBase || bottom instanceof RemoteBaseElsewhere) remote = bottom;
      return bottom;
    });
    return new ExportBacking(options, base, remote);
  }

  /** Devices open on this backing now. */
  get openDevices(): number {
    return this.#openDevices;
  }

  /** One connection's device: the base alone (read-only) or a new throwaway overlay on it. */
  async openPlain(): Promise<BlockDevice> {
    if (this.#elsewhere !== undefined) await this.#moveToCacheHolder(this.#elsewhere);
    const { readOnly, blockSize, overlayDir, space, elideBaseMatches, events } = this.options;
    const device: BlockDevice = readOnly
      ? readOnlyView(this.base)
      : new CowDevice({
          base: this.base,
          blockSize,
          overlayPath: join(overlayDir, ephemeralOverlayName(process.pid, this.options.nextOverlayNumber())),
          ...(space !== undefined ? { space } : {}),
          elideBaseMatches,
          events,
        });
    return this.#counted(device);
  }

  /**
   * One connection's handle on the named overlay `overlayName` (shared, kept). Held by a sibling
   * worker, a HandOver to it instead (hand-over.ts).
   */
  async openNamed(overlayName: string): Promise<BlockDevice> {
    if (this.#elsewhere !== undefined) await this.#moveToCacheHolder(this.#elsewhere);
    // Counted from the start: a retire() during the attach must not close the base under it.
    this.#openDevices++;
    let device: BlockDevice;
    try {
      device = await this.#named.attach(this.options.exportName, overlayName);
    } catch (err) {
      this.#deviceClosed();
      const holder = lockHolderOf(err);
      if (holder !== undefined && this.options.siblingWorker?.(holder) === true) {
        throw new HandOver(holder, err instanceof Error ? err.message : String(err));
      }
      throw err;
    }
    return this.#closeCounted(device);
  }

  /**
   * The worker holding the remote base's block cache serves every connection to it: a HandOver
   * to it. When no sibling holds the cache now (its worker died and the one replacing it has not
   * started yet), the GO is refused, to be tried again.
   */
  async #moveToCacheHolder(elsewhere: RemoteBaseElsewhere): Promise<never> {
    const holder = await lockHolder(elsewhere.cacheLock);
    const pid = holder?.alive === true ? holder.pid : undefined;
    if (pid !== undefined && this.options.siblingWorker?.(pid) === true) {
      throw new HandOver(
        pid,
        `the block cache of ${elsewhere.path} is held by worker ${pid}`,
        "holds the remote base's block cache",
      );
    }
    throw new OptionError(
      NBD_REP_ERR_UNKNOWN,
      `the block cache of ${elsewhere.path} is held by ${pid === undefined ? 'no worker now' : `process ${pid}, not a worker of this server`}: ` +
        'the worker that held it is being replaced; try again',
    );
  }

  /**
   * No new connection will come (a reload replaced it): close once the last device closes.
   * Resolves when the backing is closed.
   */
  retire(): Promise<void> {
    this.#retired = true;
    if (this.#openDevices === 0) void this.close();
    return this.#closed;
  }

  /** Close the named overlays and the base, whatever is still attached (server stop). */
  close(): Promise<void> {
    this.#closing ??= this.#named
      .closeAll()
      .finally(() => this.base.close())
      .finally(() => this.#resolveClosed());
    return this.#closing;
  }

  #deviceClosed(): void {
    this.#openDevices--;
    if (this.#retired && this.#openDevices === 0) void this.close();
  }

  #counted(device: BlockDevice): BlockDevice {
    this.#openDevices++;
    return this.#closeCounted(device);
  }

  /**
   * Count `device` (already counted open) closed at its close(). The close is replaced on the
   * instance itself, so the request path calls the device's own methods with nothing in between.
   */
  #closeCounted(device: BlockDevice): BlockDevice {
    const close = device.close.bind(device);
    let closed = false;
    device.close = async () => {
      try {
        await close();
      } finally {
        if (!closed) {
          closed = true;
          this.#deviceClosed();
          if (this.#closing !== null) await this.#closing;
        }
      }
    };
    return device;
  }
}

/**
 * A view of the shared base for one read-only connection: its reads go inline or to the
 * threadpool by a guard of its own (BaseImage.read); closing it keeps the base open.
 */
function readOnlyView(base: BaseImage): BlockDevice {
  const guard = new InlineIoGuard();
  return {
    size: base.size,
    writable: false,
    read: (offset, dest) => base.read(offset, dest, guard),
    write: (offset, data, options) => base.write(offset, data, options),
    zero: (offset, length, options) => base.zero(offset, length, options),
    trim: (offset, length, options) => base.trim(offset, length, options),
    flush: () => base.flush(),
    cache: (offset, length) => base.cache(offset, length),
    extents: (offset, length, max) => base.extents(offset, length, max),
    close: async () => undefined,
  };
}
