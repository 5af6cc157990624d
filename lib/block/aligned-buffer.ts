// Memory that starts at a page boundary, for direct I/O: O_DIRECT wants the buffer aligned as
// the file offset is. Node has no aligned allocation (a Buffer's bytes start wherever malloc put
// them, 16 bytes past a page for a large one), but a WebAssembly.Memory is mapped in whole pages,
// so its bytes start at a page boundary.

const WASM_PAGE = 64 * 1024;

/**
 * `size` bytes starting at a page boundary, not zeroed in any promised way. Where WebAssembly is
 * not available (node --jitless) this is an ordinary Buffer, which direct I/O may refuse with
 * EINVAL: direct-io-file.ts then goes on buffered.
 */
export function pageAlignedBuffer(size: number): Buffer {
  if (typeof WebAssembly === 'undefined') return Buffer.allocUnsafe(size);
  try {
    const memory = new WebAssembly.Memory({ initial: Math.max(1, Math.ceil(size / WASM_PAGE)) });
    return Buffer.from(memory.buffer, 0, size);
  } catch {
    return Buffer.allocUnsafe(size);
  }
}
