// Defaults shared by the command line, the configuration file and the Node API.

import { tmpdir } from 'node:os';
import { basename, extname, join } from 'node:path';

/** Overlay block size when none is given: 4 KiB first writes need no copy-up from the base. */
export const DEFAULT_BLOCK_SIZE = 4096;
export const DEFAULT_PORT = 10809;
/** What clients together may buffer in the server when no buffer memory is given. */
export const DEFAULT_BUFFER_MEMORY = 256 * 1024 * 1024;
/**
 * Connections served at once when no cap is given. A cap bounds what a flood of connections
 * can take (make bench measured 90 KiB of RSS per writing connection, and each holds a socket
 * and an overlay file descriptor): 1024 is about 90 MiB and 2,050 fds, and still admits the
 * bench's scale run (1,000 connections plus a probe session).
 */
export const DEFAULT_MAX_CONNECTIONS = 1024;

/** The file name a base path or URL ends in (a URL's query and fragment left out). */
export function baseFileName(base: string): string {
  if (/^(https?|s3):\/\//i.test(base)) {
    try {
      return basename(decodeURIComponent(new URL(base).pathname));
    } catch {
      return basename(base);
    }
  }
  return basename(base);
}

/** The default export name for a base path or URL: its file name without the extension. */
export function defaultExportName(basePath: string): string {
  const name = baseFileName(basePath);
  const stem = name.slice(0, name.length - extname(name).length);
  return stem === '' ? name : stem;
}

/** `$TMPDIR/nbd-cow-UID` for the user the server runs as (`uid`: the one it will become). */
export function defaultOverlayDir(uid = typeof process.getuid === 'function' ? process.getuid() : 0): string {
  return join(tmpdir(), `nbd-cow-${uid}`);
}
