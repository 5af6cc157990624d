// `nbd-cow overlay commit FILE --base BASE -o NEW`: write what a client of the overlay reads
// (the base with the overlay on top) as a new raw image. BASE and FILE are opened read-only and
// never changed; NEW is written as NEW.tmp and renamed once complete, verified and durable
// (commit-output.ts), so an interrupted commit never leaves a half image under the name NEW.
// `verify: false` and `flush: false` leave out the read-back and the fdatasyncs: then the image
// is only as safe as a plain `qemu-img convert` leaves it (a power loss soon after may take its
// data, under either name).
//
// Refused, in one line, before anything is written: an overlay made for another base (size and
// fingerprint, as every open checks), and unless --force an overlay a live server holds (its map
// on disk lags the writes it has taken) or one not closed cleanly. With --force both commit the
// last flushed map, which is consistent (doc/overlay-format.md, "Crash safety"); an overlay a
// server is writing to meanwhile may still change under the copy.
//
// The copy itself (sparse, verified, flushed) is commit-copy.ts.

import type { BaseImage } from './base-image.js';
import { codedError } from './coded-error.js';
import { Composer, copyImage } from './commit-copy.js';
import { CommitOutput } from './commit-output.js';
import { openImageStack } from './layer-stack.js';
import { type InspectedOverlay, openOverlayReadOnly } from './overlay-inspect.js';
import { checkBaseBinding } from './overlay-layout.js';

export interface CommitProgress {
  /** Writing the image, then reading it back. */
  readonly phase: 'copy' | 'verify';
  /** Bytes of the image done in this phase. */
  readonly done: number;
  readonly total: number;
}

export interface CommitOptions {
  readonly base: string;
  /** Opens the base (default: the local file; lib/remote/open-base-image.ts opens a URL too). */
  readonly openBase?: (path: string) => Promise<BaseImage>;
  /** Frozen overlays on the base, bottom first: the overlay belongs on the last. */
  readonly layers?: readonly string[];
  readonly output: string;
  /** Commit an overlay in use or not closed cleanly; replace an existing output. */
  readonly force?: boolean;
  readonly onProgress?: (progress: CommitProgress) => void;
  /** Stops the commit between windows; NEW.tmp is removed and an ECANCELED-coded error thrown. */
  readonly signal?: AbortSignal;
  /** Read NEW back and compare it with base + overlay (default: true). */
  readonly verify?: boolean;
  /** fdatasync NEW and its directory (default: true). */
  readonly flush?: boolean;
}

export interface CommitResult {
  readonly output: string;
  readonly size: number;
  /** Bytes written to NEW; the rest of it is holes. */
  readonly writtenBytes: number;
  /** What NEW takes on disk (st_blocks × 512). */
  readonly allocatedBytes: number;
  /** What --force let through, in words ("overlay in use by process 12"); empty without it. */
  readonly overridden: readonly string[];
  /** Whether NEW was read back and compared, and flushed to disk. */
  readonly verified: boolean;
  readonly flushed: boolean;
}

/** The overlay's state that only --force lets through, in words, or undefined. */
function overridable(o: InspectedOverlay): string | undefined {
  if (o.inUseBy !== undefined) return `overlay in use by process ${o.inUseBy}`;
  if (o.header.dirty) return 'overlay not closed cleanly';
  return undefined;
}

function refusalMessage(o: InspectedOverlay, base: string): string {
  if (o.inUseBy !== undefined) {
    return (
      `overlay ${o.path} is in use by process ${o.inUseBy} (a server has it open; its map on disk lags its writes): ` +
      'stop the server first, or --force to commit its last flushed state'
    );
  }
  return (
    `overlay ${o.path} was not closed cleanly: run 'nbd-cow overlay check ${o.path} --base ${base} --repair' first, ` +
    'or --force to commit its last flushed state'
  );
}

/** Refuse (EINVAL) an overlay not made for this base, as `overlay check` does. */
function checkBelongs(o: InspectedOverlay, base: { size: number; fingerprint: string }): void {
  checkBaseBinding(o.path, o.header, base);
  if (o.geometry.size !== base.size) {
    throw codedError('EINVAL', `overlay ${o.path}: virtual size ${o.geometry.size} differs from the base size ${base.size}`);
  }
}

/** Commit the overlay at `path` onto its base as a new raw image (see the top of this file). */
export async function commitOverlay(path: string, options: CommitOptions): Promise<CommitResult> {
  const force = options.force ?? false;
  const verify = options.verify ?? true;
  const flush = options.flush ?? true;
  const layers = options.layers ?? [];
  const base = await openImageStack(options.base, layers, options.openBase);
  try {
    const { inspected, file } = await openOverlayReadOnly(path);
    try {
      checkBelongs(inspected, base.identity);
      const overlayState = overridable(inspected);
      if (overlayState !== undefined && !force) throw codedError('EBUSY', refusalMessage(inspected, options.base));
      const inputs = [
        { path: options.base, what: 'base image' },
        ...layers.map((layer) => ({ path: layer, what: 'layer' })),
        { path, what: 'overlay' },
      ];
      const out = await CommitOutput.create(options.output, { force, inputs });
      try {
        const size = base.size;
        const written = await copyImage(new Composer(base, file, inspected), out.target, {
          size,
          signal: options.signal,
          verify,
          flush,
          progress: (phase, done) => options.onProgress?.({ phase, done, total: size }),
        });
        options.signal?.throwIfAborted(); // an abort during the last windows or the flush
        const allocatedBytes = (await out.file.stat()).blocks * 512;
        await out.publish({ durable: flush });
        const overridden = [overlayState, out.replaces ? `replaced ${options.output}` : undefined].filter(
          (s): s is string => s !== undefined,
        );
        return {
          output: options.output,
          size,
          writtenBytes: written,
          allocatedBytes,
          overridden,
          verified: verify,
          flushed: flush,
        };
      } catch (err) {
        await out.discard();
        if (options.signal?.aborted === true) {
          throw codedError('ECANCELED', `commit interrupted: ${out.tmpPath} removed, ${options.output} not written`);
        }
        throw err;
      }
    } finally {
      await file.close();
    }
  } finally {
    await base.close();
  }
}
