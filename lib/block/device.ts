// The narrow storage API the server talks to. It knows nothing of NBD or sockets: byte offsets
// in, bytes or errors out. Errors are plain Errors carrying a POSIX `code` ('ENOSPC', 'EIO', ...);
// only the server maps them to NBD errno values.

/** Where the bytes of an extent come from. */
export type ExtentState =
  /** Not in the overlay: the base image supplies the bytes. */
  | 'base'
  /** Written into the overlay: the overlay supplies the bytes. */
  | 'data'
  /** Zeroed or trimmed in the overlay: reads as zeros, no data stored. */
  | 'zero';

export interface Extent {
  readonly length: number;
  readonly state: ExtentState;
  /**
   * Which level of the device supplies the bytes, counted from the top as qemu counts a backing
   * chain: 1 = the device's own overlay (or the image itself), 2 = the level below it, and so on
   * down to the base file. When absent: 1 for "data" and "zero", 2 for "base".
   */
  readonly depth?: number;
}

/** The depth of `extent` (Extent.depth, or what its absence means). */
export function extentDepth(extent: Extent): number {
  return extent.depth ?? (extent.state === 'base' ? 2 : 1);
}

export interface WriteOptions {
  /** Force unit access: the data is durable before the promise resolves. */
  readonly fua: boolean;
}

export interface ZeroOptions extends WriteOptions {
  /** Store real zero bytes instead of recording a zero (hole) state. */
  readonly noHole: boolean;
}

/**
 * A byte-addressed device. The caller validates ranges (0 <= offset, offset + length <= size)
 * before calling; an implementation may still throw an EINVAL/ENOSPC-coded error for a range
 * it cannot serve.
 */
export interface BlockDevice {
  /** Size in bytes; never changes while the device is open. */
  readonly size: number;
  /** False for a device that rejects every write-type call with an EPERM-coded error. */
  readonly writable: boolean;
  /** Fill `dest` with the `dest.length` bytes at `offset`. */
  read(offset: number, dest: Buffer): Promise<void>;
  /** Store `data` at `offset`. */
  write(offset: number, data: Buffer, options: WriteOptions): Promise<void>;
  /**
   * Optional: store the concatenation of `chunks` at `offset` without joining them first (a
   * large WRITE payload as it arrived from the socket). Same contract as write().
   */
  writev?(offset: number, chunks: readonly Buffer[], options: WriteOptions): Promise<void>;
  /** Make the range read back as zeros. */
  zero(offset: number, length: number, options: ZeroOptions): Promise<void>;
  /** Discard the range; afterwards it reads back as zeros (never as the base). */
  trim(offset: number, length: number, options: WriteOptions): Promise<void>;
  /** Make every write that completed before this call durable. */
  flush(): Promise<void>;
  /** Prefetch hint: warm caches for the range; no visible effect on contents. */
  cache(offset: number, length: number): Promise<void>;
  /**
   * Describe the range starting at `offset` as consecutive extents. The extents start exactly
   * at `offset`, are in order, never run past the device's end, and cover at least the first
   * byte; they may stop before `offset + length` (at most `maxExtents` of them).
   */
  extents(offset: number, length: number, maxExtents: number): Promise<Extent[]>;
  /** Optional: bytes of data the device holds beside its base (an overlay's data blocks). */
  dataBytes?(): number;
  /** Release everything; an ephemeral overlay file is deleted. Safe to call twice. */
  close(): Promise<void>;
}
