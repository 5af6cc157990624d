// Named overlays inside one server process: one shared CowDevice per `EXPORT@NAME`, opened at
// the first NBD_OPT_GO naming it and closed (flushed, marked clean, kept) when its last
// connection closes. Each connection gets a handle; the handle's close() only drops a reference.
// Since every connection uses the same device object, map and file descriptor, a write that
// completed on one connection is visible to all, and a flush on any of them makes every write
// completed before it durable: CAN_MULTI_CONN is true.
//
// attach() is asynchronous: it takes the lock file (overlay-lock.ts) and opens an existing
// overlay (header and map, OverlayFile.open) while the connection waits at GO, so a held lock,
// another base's overlay or a corrupt file become a refusal of that GO. The entry for a name is
// in the map from the moment its open starts, so a second GO for the same name waits for that
// open and shares its device (or its refusal) instead of opening the file, or taking the lock,
// a second time. A GO that arrives while the last connection's close is still running waits
// for that close (device flushed and closed, lock released, entry gone), then opens afresh.
//
//   entry states: opening -> open (refs > 0) -> closing (refs = 0) -> gone (lock released)
//                     \-> gone (open refused: lock released, every waiting GO refused)

import { join } from 'node:path';
import type { BaseImage } from './base-image.js';
import { codedError } from './coded-error.js';
import { CowDevice } from './cow-device.js';
import type { BlockDevice, Extent, WriteOptions, ZeroOptions } from './device.js';
import type { OverlayEvents } from './overlay-events.js';
import { OverlayFile } from './overlay-file.js';
import { acquireOverlayLock, lockHolderOf, type OverlayLock } from './overlay-lock.js';
import { lockFileName, namedOverlayFileName } from './overlay-names.js';
import type { SpaceLimits } from './space-budget.js';

export interface NamedOverlaysOptions {
  readonly base: BaseImage;
  /** Block size of new overlays; an existing one keeps the block size it was made with. */
  readonly blockSize: number;
  readonly dir: string;
  /** Told about overlays that were not closed cleanly, and refused opens. */
  readonly warn?: (message: string) => void;
  /** Limits on the data each overlay holds; an overlay opened from disk counts what its map holds. */
  readonly space?: SpaceLimits;
  /** Who hears of copy-ups, zeroed and elided blocks; nobody when absent. */
  readonly events?: OverlayEvents;
  /** Whole blocks a WRITE makes equal to the base's go back to "base" (CowDeviceOptions.elideBaseMatches). */
  readonly elideBaseMatches?: boolean;
  /** A lock holder (pid) whose overlays the server reaches another way (a sibling worker): no warning when it holds one. */
  readonly reachable?: (holder: number) => boolean;
}

interface Opened {
  readonly device: CowDevice;
  readonly lock: OverlayLock;
}

interface Entry {
  readonly path: string;
  /** Handles given out, plus attaches waiting for `opened`. */
  refs: number;
  /** Settles once the open is done; on refusal the entry has left the map by then. */
  readonly opened: Promise<Opened>;
  /** Set when the last handle is released; the entry leaves the map before it settles. */
  closing: Promise<void> | null;
}

export class NamedOverlays {
  readonly #options: NamedOverlaysOptions;
  readonly #entries = new Map<string, Entry>();

  constructor(options: NamedOverlaysOptions) {
    this.#options = options;
  }

  /** Named overlays opening, open or closing in this process. */
  get openCount(): number {
    return this.#entries.size;
  }

  /** The path of the named overlay `overlayName` of `exportName` (both validated). */
  pathOf(exportName: string, overlayName: string): string {
    return join(this.#options.dir, namedOverlayFileName(exportName, overlayName));
  }

  /**
   * A device for one connection to `exportName@overlayName`. Rejects with an EBUSY-coded error
   * when another process holds it, EINVAL for a corrupt overlay or one made for another base,
   * a RangeError for an invalid name, or the open error.
   */
  async attach(exportName: string, overlayName: string): Promise<BlockDevice> {
    const what = `${exportName}@${overlayName}`;
    try {
      const path = this.pathOf(exportName, overlayName);
      return await this.#attach(path, lockFileName(path), what);
    } catch (err) {
      const holder = lockHolderOf(err);
      if (holder === undefined || this.#options.reachable?.(holder) !== true) {
        this.#options.warn?.(`refused ${what}: ${err instanceof Error ? err.message : String(err)}`);
      }
      throw err;
    }
  }

  async #attach(path: string, lockPath: string, what: string): Promise<BlockDevice> {
    let entry = this.#entries.get(path);
    // A close in progress: wait until it is over (and the entry gone), then look again.
    while (entry !== undefined && entry.closing !== null) {
      await entry.closing.catch(() => undefined);
      entry = this.#entries.get(path);
    }
    if (entry === undefined) {
      const created: Entry = { path, refs: 0, opened: this.#open(path, lockPath, what), closing: null };
      this.#entries.set(path, created);
      // Registered before any attach awaits `opened`, so a refused entry is gone when they wake.
      created.opened.catch(() => {
        if (this.#entries.get(path) === created) this.#entries.delete(path);
      });
      entry = created;
    }
    entry.refs++;
    let opened: Opened;
    try {
      opened = await entry.opened;
    } catch (err) {
      entry.refs--;
      throw err;
    }
    return new NamedHandle(this.#options.base.size, opened.device, this.#releaser(entry, opened));
  }

  /** Take the lock and open the file; on refusal, the lock is released again. */
  async #open(path: string, lockPath: string, what: string): Promise<Opened> {
    const lock = await acquireOverlayLock(lockPath, `named overlay ${what}`);
    let overlay: OverlayFile | undefined;
    try {
      overlay = await this.#openExisting(path);
      return { device: this.#core(path, overlay), lock };
    } catch (err) {
      await overlay?.close();
      await lock.release();
      throw err;
    }
  }

  /** Wait for every named overlay to be closed (the server calls it after its connections). */
  async closeAll(): Promise<void> {
    const pending = [...this.#entries.values()].map(async (entry) => {
      const opened = await entry.opened;
      // Still attached (a connection that outlived the server's drain): close it anyway.
      return entry.closing ?? this.#close(entry, opened);
    });
    await Promise.allSettled(pending);
  }

  #releaser(entry: Entry, opened: Opened): () => Promise<void> {
    let released = false;
    return () => {
      if (released) return Promise.resolve();
      released = true;
      entry.refs--;
      if (entry.closing !== null) return entry.closing; // closeAll got there first
      return entry.refs > 0 ? Promise.resolve() : this.#close(entry, opened);
    };
  }

  /** Close the device and release the lock; the entry leaves the map before this settles. */
  #close(entry: Entry, opened: Opened): Promise<void> {
    const closing = (async () => {
      try {
        await opened.device.close();
      } finally {
        await opened.lock.release().finally(() => this.#entries.delete(entry.path));
      }
    })();
    entry.closing = closing;
    return closing;
  }

  async #openExisting(path: string): Promise<OverlayFile | undefined> {
    let overlay: OverlayFile;
    try {
      overlay = await OverlayFile.open(path, this.#options.base.identity);
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined; // made at the first write
      throw err;
    }
    if (overlay.wasDirty) {
      this.#options.warn?.(
        `named overlay ${overlay.path} was not closed cleanly (server killed?); ` +
          'serving its last flushed state: writes that were never flushed may be missing',
      );
    }
    return overlay;
  }

  #core(path: string, overlay: OverlayFile | undefined): CowDevice {
    const { base, blockSize, space, events, elideBaseMatches } = this.#options;
    return new CowDevice({
      base,
      blockSize: overlay?.blockSize ?? blockSize,
      overlayPath: path,
      keep: true,
      ...(overlay !== undefined ? { overlay } : {}),
      ...(space !== undefined ? { space } : {}),
      ...(events !== undefined ? { events } : {}),
      ...(elideBaseMatches !== undefined ? { elideBaseMatches } : {}),
    });
  }
}

/** One connection's view of a shared named overlay; close() drops its reference. */
class NamedHandle implements BlockDevice {
  readonly writable = true;
  readonly size: number;
  readonly #device: CowDevice;
  readonly #release: () => Promise<void>;
  #closed = false;

  constructor(size: number, device: CowDevice, release: () => Promise<void>) {
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

  writev(offset: number, chunks: readonly Buffer[], options: WriteOptions): Promise<void> {
    return this.#with((d) => d.writev(offset, chunks, options));
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

  dataBytes(): number {
    return this.#device.dataBytes();
  }

  close(): Promise<void> {
    this.#closed = true;
    return this.#release();
  }

  #with<T>(fn: (device: CowDevice) => Promise<T>): Promise<T> {
    if (this.#closed) return Promise.reject(codedError('ESHUTDOWN', 'connection to the named overlay is closed'));
    return fn(this.#device);
  }
}
