// Named overlays inside one server process: one shared CowDevice per `EXPORT@NAME`, opened at
// the first NBD_OPT_GO naming it and closed (flushed, marked clean, kept) when its last
// connection closes. Each connection gets a handle; the handle's close() only drops a reference.
// Since every connection uses the same device object, map and file descriptor, a write that
// completed on one connection is visible to all, and a flush on any of them makes every write
// completed before it durable: CAN_MULTI_CONN is true.
//
// attach() is synchronous, because option handling is: taking the lock file (overlay-lock.ts)
// and opening an existing overlay (header and map, OverlayFile.openSync) happen there, so a held
// lock, another base's overlay or a corrupt file are refused at GO. A GO that arrives while the
// last connection's close is still running reuses the lock and reopens the file asynchronously
// once the close is done (its requests wait for that).
//
//   entry states: open (refs > 0) -> closing (refs = 0) -> gone (lock released)
//                                       \-> reopening (a GO during closing; refs = 1)

import { join } from 'node:path';
import type { BaseImage } from './base-image.js';
import { CowDevice } from './cow-device.js';
import type { BlockDevice, Extent, WriteOptions, ZeroOptions } from './device.js';
import { acquireOverlayLock, type OverlayLock } from './overlay-lock.js';
import { lockFileName, namedOverlayFileName } from './overlay-names.js';
import { OverlayFile } from './overlay-file.js';

export interface NamedOverlaysOptions {
  readonly base: BaseImage;
  /** Block size of new overlays; an existing one keeps the block size it was made with. */
  readonly blockSize: number;
  readonly dir: string;
  /** Told about overlays that were not closed cleanly, and failed reopens. */
  readonly warn?: (message: string) => void;
}

interface Entry {
  readonly path: string;
  readonly lock: OverlayLock;
  refs: number;
  device: CowDevice | Promise<CowDevice>;
  closing: Promise<void> | null;
}

function codedError(code: string, message: string): Error {
  return Object.assign(new Error(message), { code });
}

export class NamedOverlays {
  readonly #options: NamedOverlaysOptions;
  readonly #entries = new Map<string, Entry>();

  constructor(options: NamedOverlaysOptions) {
    this.#options = options;
  }

  /** Named overlays open (or closing) in this process. */
  get openCount(): number {
    return this.#entries.size;
  }

  /** The path of the named overlay `overlayName` of `exportName` (both validated). */
  pathOf(exportName: string, overlayName: string): string {
    return join(this.#options.dir, namedOverlayFileName(exportName, overlayName));
  }

  /**
   * A device for one connection to `exportName@overlayName`. Throws (synchronously) an
   * EBUSY-coded error when another process holds it, EINVAL for a corrupt overlay or one made
   * for another base, or the open error.
   */
  attach(exportName: string, overlayName: string): BlockDevice {
    try {
      return this.#attach(exportName, overlayName);
    } catch (err) {
      this.#options.warn?.(`refused ${exportName}@${overlayName}: ${err instanceof Error ? err.message : String(err)}`);
      throw err;
    }
  }

  #attach(exportName: string, overlayName: string): BlockDevice {
    const path = this.pathOf(exportName, overlayName);
    let entry = this.#entries.get(path);
    if (entry === undefined) {
      const lockPath = join(this.#options.dir, lockFileName(namedOverlayFileName(exportName, overlayName)));
      const lock = acquireOverlayLock(lockPath, `named overlay ${exportName}@${overlayName}`);
      let device: CowDevice;
      try {
        device = this.#core(path, this.#openExisting(path, () => OverlayFile.openSync(path, this.#options.base.identity)));
      } catch (err) {
        lock.release();
        throw err;
      }
      entry = { path, lock, refs: 0, device, closing: null };
      this.#entries.set(path, entry);
    } else if (entry.refs === 0 && entry.closing !== null) {
      const closed = entry.closing.catch(() => undefined);
      const reopened = closed.then(async () => this.#core(path, await this.#openExistingAsync(path)));
      reopened.catch((err: unknown) => this.#options.warn?.(`reopening ${path}: ${String(err)}`));
      entry.device = reopened;
      entry.closing = null;
    }
    entry.refs++;
    return new NamedHandle(this.#options.base.size, entry.device, this.#releaser(entry));
  }

  /** Wait for every named overlay to be closed (the server calls it after its connections). */
  async closeAll(): Promise<void> {
    const pending = [...this.#entries.values()].map((entry) => {
      if (entry.closing !== null) return entry.closing;
      // Still attached (a connection that outlived the server's drain): close it anyway.
      return Promise.resolve(entry.device)
        .then((d) => d.close())
        .finally(() => {
          this.#entries.delete(entry.path);
          entry.lock.release();
        });
    });
    await Promise.allSettled(pending);
  }

  #releaser(entry: Entry): () => Promise<void> {
    let released = false;
    return () => {
      if (released) return Promise.resolve();
      released = true;
      return this.#release(entry);
    };
  }

  #release(entry: Entry): Promise<void> {
    entry.refs--;
    if (entry.refs > 0) return entry.closing ?? Promise.resolve();
    const device = entry.device;
    const closing = Promise.resolve(device).then((d) => d.close());
    entry.closing = closing;
    const forget = (): void => {
      // Still ours: no GO reopened it meanwhile.
      if (entry.closing !== closing) return;
      this.#entries.delete(entry.path);
      entry.lock.release();
    };
    return closing.then(forget, (err: unknown) => {
      forget();
      throw err;
    });
  }

  #openExisting(path: string, open: () => OverlayFile): OverlayFile | undefined {
    let overlay: OverlayFile;
    try {
      overlay = open();
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined; // made at the first write
      throw err;
    }
    this.#warnIfDirty(overlay);
    return overlay;
  }

  async #openExistingAsync(path: string): Promise<OverlayFile | undefined> {
    try {
      const overlay = await OverlayFile.open(path, this.#options.base.identity);
      this.#warnIfDirty(overlay);
      return overlay;
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
  }

  #warnIfDirty(overlay: OverlayFile): void {
    if (!overlay.wasDirty) return;
    this.#options.warn?.(
      `named overlay ${overlay.path} was not closed cleanly (server killed?); ` +
        'serving its last flushed state: writes that were never flushed may be missing',
    );
  }

  #core(path: string, overlay: OverlayFile | undefined): CowDevice {
    const { base, blockSize } = this.#options;
    return new CowDevice({
      base,
      blockSize: overlay?.blockSize ?? blockSize,
      overlayPath: path,
      keep: true,
      ...(overlay !== undefined ? { overlay } : {}),
    });
  }
}

/** One connection's view of a shared named overlay; close() drops its reference. */
class NamedHandle implements BlockDevice {
  readonly writable = true;
  readonly size: number;
  readonly #device: CowDevice | Promise<CowDevice>;
  readonly #release: () => Promise<void>;
  #closed = false;

  constructor(size: number, device: CowDevice | Promise<CowDevice>, release: () => Promise<void>) {
    this.size = size;
    this.#device = device;
    this.#release = release;
  }

  read(offset: number, dest: Buffer): Promise<void> {
    return this.#with((d) => d.read(offset, dest));
  }

  write(offset: number, data: Buffer, options: WriteOptions): Promise<void> {
    return this.#with((d) => d.write(offset, data, options));
  }

  zero(offset: number, length: number, options: ZeroOptions): Promise<void> {
    return this.#with((d) => d.zero(offset, length, options));
  }

  trim(offset: number, length: number, options: WriteOptions): Promise<void> {
    return this.#with((d) => d.trim(offset, length, options));
  }

  flush(): Promise<void> {
    return this.#with((d) => d.flush());
  }

  cache(offset: number, length: number): Promise<void> {
    return this.#with((d) => d.cache(offset, length));
  }

  extents(offset: number, length: number, maxExtents: number): Promise<Extent[]> {
    return this.#with((d) => d.extents(offset, length, maxExtents));
  }

  close(): Promise<void> {
    this.#closed = true;
    return this.#release();
  }

  #with<T>(fn: (device: CowDevice) => Promise<T>): Promise<T> {
    if (this.#closed) return Promise.reject(codedError('ESHUTDOWN', 'connection to the named overlay is closed'));
    const device = this.#device;
    return device instanceof CowDevice ? fn(device) : device.then(fn);
  }
}
