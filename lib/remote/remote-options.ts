// How a base image held on an HTTP(S) server is read and cached (serve's --cache-dir,
// --cache-size, --prefetch, --remote-timeout, --remote-retries, and the same keys in a
// configuration file), with the defaults the command line, the file and the Node API share.

import { homedir } from 'node:os';
import { join } from 'node:path';
import type { S3Options } from './s3-location.js';

export interface RemoteOptions {
  /** Where the block cache's files live; default: defaultCacheDir(). */
  readonly cacheDir?: string;
  /** Bytes the cache may hold (its data file's largest size); default: the whole image. */
  readonly cacheSize?: number;
  /** Fetch the whole image into the cache in the background, after the clients' own reads. */
  readonly prefetch?: boolean;
  /** Milliseconds one HTTP request may take, from sending it to its last byte. */
  readonly timeoutMs?: number;
  /** Further tries of a request that failed on the way (network, timeout, 5xx), with backoff. */
  readonly retries?: number;
  /** An s3:// base: endpoint, region and credentials profile, beside the environment and ~/.aws (s3-location.ts). */
  readonly s3?: S3Options;
  /**
   * A worker's (`serve --workers N`): whether the process holding the block cache's lock is a
   * sibling worker. Then the base opens as a RemoteBaseElsewhere, served by that worker.
   */
  readonly cacheHeldBySibling?: (holder: number) => boolean;
}

/** Where a remote base says what it does: retries and damaged cache blocks (warn), prefetch and its totals (info). */
export interface RemoteLog {
  readonly warn: (message: string) => void;
  readonly info: (message: string) => void;
}

export const DEFAULT_REMOTE_TIMEOUT_MS = 30_000;
export const DEFAULT_REMOTE_RETRIES = 4;
/** HTTP connections to the origin at once: concurrent fetches beyond this wait their turn. */
export const ORIGIN_CONNECTIONS = 8;
/** Bytes fetched and cached as one unit: the cache's block, and the least one fetch asks for. */
export const CACHE_BLOCK_SIZE = 64 * 1024;
/** The smallest --cache-size: enough blocks for every connection's largest reads at once. */
export const MIN_CACHE_SIZE = 16 * 1024 * 1024;

/** systemd's CacheDirectory= (CACHE_DIRECTORY) when set, else $XDG_CACHE_HOME/nbd-cow (~/.cache/nbd-cow). */
export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  const systemd = env['CACHE_DIRECTORY']?.split(':')[0];
  if (systemd !== undefined && systemd !== '') return systemd;
  const xdg = env['XDG_CACHE_HOME'];
  return join(xdg?.startsWith('/') ? xdg : join(homedir(), '.cache'), 'nbd-cow');
}
