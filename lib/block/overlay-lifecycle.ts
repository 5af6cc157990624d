// `nbd-cow overlay create | discard | freeze`: make a named overlay ahead of time, delete one
// safely, make one read-only for good so it can serve as a layer (layer-stack.ts). Each takes the
// overlay's lock file first, as a server does when a client opens it (overlay-lock.ts), so it is
// refused, in one line and changing nothing, while a server has the overlay open, and no server
// can open it halfway through.
//
//   create   a new, clean, empty overlay (every block "base") for BASE with its --layer stack;
//            built under a temporary name and published whole, so it never exists half made;
//   discard  removes the file (and the directory entry durably); refuses what is not an nbd-cow
//            overlay, and a frozen one without --force (overlays made on it read through it);
//   freeze   sets the frozen flag and a random layer id in the header (fdatasync), then takes
//            the write bits off the file; refuses an overlay not closed cleanly. Freezing a
//            frozen overlay only takes off write bits a crash may have left (it is read, not
//            opened for writing). A frozen overlay is never opened for writing again.

import { randomBytes } from 'node:crypto';
import { chmod, mkdir, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import type { BaseIdentity, BaseImage } from './base-image.js';
import { codedError } from './coded-error.js';
import { syncDirectory } from './control-file.js';
import { DataFile } from './data-file.js';
import { layerIdentity } from './layer-identity.js';
import { openImageStack } from './layer-stack.js';
import { OverlayFile, readOverlayHeader } from './overlay-file.js';
import { encodeOverlayHeader, LAYER_ID_LENGTH } from './overlay-header.js';
import { inspectOverlay } from './overlay-inspect.js';
import { acquireOverlayLock } from './overlay-lock.js';
import { lockFileName } from './overlay-names.js';
import { O_RDWR, unlinkFile } from './syscalls.js';

export interface CreateOptions {
  readonly base: string;
  /** Opens the base (default: the local file; lib/remote/open-base-image.ts opens a URL too). */
  readonly openBase?: (path: string) => Promise<BaseImage>;
  /** Frozen overlays on the base, bottom first: the new overlay is made on the last one. */
  readonly layers?: readonly string[];
  readonly blockSize: number;
}

/** Run `fn` holding the lock of the overlay at `path` (EBUSY, naming the holder, when taken). */
async function withLock<T>(path: string, fn: () => Promise<T>): Promise<T> {
  const lock = await acquireOverlayLock(lockFileName(path), `overlay ${path}`);
  try {
    return await fn();
  } finally {
    await lock.release();
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await stat(path);
    return true;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
}

/** chmod a-w `path` (a frozen overlay). */
async function takeWriteBits(path: string): Promise<void> {
  const mode = (await stat(path)).mode & 0o7777;
  if ((mode & 0o222) !== 0) await chmod(path, mode & ~0o222);
}

/** Create a clean empty overlay at `path` for the base (and layers) of `options`; returns what it is made on. */
export async function createOverlay(path: string, options: CreateOptions): Promise<BaseIdentity> {
  const image = await openImageStack(options.base, options.layers ?? [], options.openBase);
  try {
    await mkdir(dirname(path), { recursive: true, mode: 0o700 });
    return await withLock(path, async () => {
      if (await exists(path)) throw codedError('EEXIST', `overlay ${path} already exists (discard it first)`);
      const overlay = await OverlayFile.create(path, {
        blockSize: options.blockSize,
        size: image.size,
        baseIdentity: image.identity,
        atomic: true,
      });
      await overlay.markClean();
      await overlay.close();
      return image.identity;
    });
  } finally {
    await image.close();
  }
}

export interface DiscardOptions {
  /** Remove a frozen overlay too. */
  readonly force?: boolean;
}

/** Remove the overlay at `path`; what it was (its header says) is returned. */
export async function discardOverlay(path: string, options: DiscardOptions = {}): Promise<{ frozen: boolean; dirty: boolean }> {
  await inspectOverlay(path); // a missing file or one that is not an overlay: its own message, no lock taken
  return withLock(path, async () => {
    // Read again under the lock: only a valid nbd-cow overlay is removed, whatever the name says.
    const { frozen = false, dirty } = (await inspectOverlay(path)).header;
    if (frozen && options.force !== true) {
      throw codedError(
        'EPERM',
        `overlay ${path} is frozen: overlays made on it as a layer read through it; --force removes it anyway`,
      );
    }
    await unlinkFile(path);
    await syncDirectory(dirname(path));
    return { frozen, dirty };
  });
}

export interface FreezeResult {
  /** It was frozen before: nothing changed. */
  readonly already: boolean;
  /** What an overlay made on it records as its base. */
  readonly identity: BaseIdentity;
}

/** Freeze the overlay at `path` (see the top of this file). */
export async function freezeOverlay(path: string): Promise<FreezeResult> {
  await inspectOverlay(path); // a missing file or one that is not an overlay: its own message, no lock taken
  return withLock(path, async () => {
    const { header: before } = await inspectOverlay(path);
    if (before.frozen === true) {
      // Read-only already (a crash between the header and the chmod could have left write bits).
      await takeWriteBits(path);
      return { already: true, identity: layerIdentity(before) };
    }
    const file = await DataFile.open(path, O_RDWR);
    try {
      const { header } = await readOverlayHeader(file);
      if (header.dirty) {
        throw codedError(
          'EBUSY',
          `overlay ${path} was not closed cleanly: run 'nbd-cow overlay check ${path} --base BASE --repair' first`,
        );
      }
      const frozen = { ...header, frozen: true, layerId: randomBytes(LAYER_ID_LENGTH).toString('hex') };
      await file.write(encodeOverlayHeader(frozen), 0);
      await file.sync();
      await takeWriteBits(path);
      return { already: false, identity: layerIdentity(frozen) };
    } finally {
      await file.close();
    }
  });
}
