// Opening a remote base: ask the origin for its size and version, derive the identity overlays
// bind to, open the block cache kept for that URL, and start the prefetch when asked.
//
// Identity: a sha256 over a tag, the size, the ETag and the Last-Modified, so an overlay made
// on one version of the image is refused on another, and the cache of the old version is
// discarded (block-cache.ts). It is not the content fingerprint of a base file
// (base-image.ts): an overlay made on a local copy of the image does not bind to its URL.

import { createHash } from 'node:crypto';
import { basename, join, resolve } from 'node:path';
import type { BaseIdentity } from '../block/base-image.js';
import { codedError } from '../block/coded-error.js';
import { lockHolderOf } from '../block/overlay-lock.js';
import { BlockCache } from './block-cache.js';
import { HttpOrigin, type OriginIdentity } from './http-origin.js';
import { RemoteBase } from './remote-base.js';
import { RemoteBaseElsewhere } from './remote-base-elsewhere.js';
import {
  CACHE_BLOCK_SIZE,
  DEFAULT_REMOTE_RETRIES,
  DEFAULT_REMOTE_TIMEOUT_MS,
  defaultCacheDir,
  MIN_CACHE_SIZE,
  type RemoteLog,
  type RemoteOptions,
} from './remote-options.js';
import { parseRemoteUrl, shownUrl } from './remote-url.js';
import { isS3Base, locateS3 } from './s3-location.js';
import { type SigningRequest, signS3Request } from './sigv4.js';

const FINGERPRINT_TAG = 'nbd-cow remote base v1\n';

/** The fingerprint of a remote image's version: sha256 over the tag, size, ETag and Last-Modified. */
export function remoteFingerprint(identity: OriginIdentity): string {
  return createHash('sha256')
    .update(`${FINGERPRINT_TAG}${identity.size}\n${identity.etag ?? ''}\n${identity.lastModified ?? ''}\n`, 'utf8')
    .digest('hex');
}

/** The cache's file name stem for `url`: its file name (safe characters only) and a hash of the URL. */
export function cacheStem(url: URL): string {
  const name =
    basename(url.pathname)
      .replace(/[^A-Za-z0-9._-]/g, '_')
      .slice(0, 48) || 'image';
  const hash = createHash('sha256').update(shownUrl(url), 'utf8').digest('hex').slice(0, 16);
  return `${name}-${hash}`;
}

/** Remote bases open in this process, by their cache's files: one RemoteBase each, shared. */
const openHere = new Map<string, Promise<RemoteBase | RemoteBaseElsewhere>>();

/**
 * Open the remote base at `base` (an http:// or https:// URL); errors are one line naming it.
 * One already open in this process on the same cache (same URL and cache directory) is shared
 * (RemoteBase.retain), with the options and the image version it was opened with.
 */
export function openRemoteBase(
  base: string,
  options: RemoteOptions & { readonly cacheHeldBySibling?: undefined },
  log: RemoteLog,
): Promise<RemoteBase>;
export function openRemoteBase(base: string, options: RemoteOptions, log: RemoteLog): Promise<RemoteBase | RemoteBaseElsewhere>;
export async function openRemoteBase(
  base: string,
  options: RemoteOptions,
  log: RemoteLog,
): Promise<RemoteBase | RemoteBaseElsewhere> {
  const target = locate(base, options);
  const key = cacheFiles(target, options);
  const existing = openHere.get(key);
  if (existing !== undefined) {
    const shared = await existing.catch(() => undefined);
    if (shared instanceof RemoteBase && !shared.closed) return shared.retain();
  }
  const opening = openNew(target, options, log);
  openHere.set(key, opening);
  const forget = (): void => {
    if (openHere.get(key) === opening) openHere.delete(key);
  };
  opening.then((remote) => (remote instanceof RemoteBase ? remote.whenClosed.then(forget) : forget()), forget);
  return opening;
}

/** The path of the cache's files for `target`, without their extension (block-cache.ts). */
function cacheFiles(target: Target, options: RemoteOptions): string {
  return join(resolve(options.cacheDir ?? defaultCacheDir()), cacheStem(target.url));
}

/** Where a remote base is read from: its URL, its name in messages, and how requests are signed. */
interface Target {
  readonly url: URL;
  readonly shown: string;
  readonly sign?: (request: SigningRequest) => Record<string, string>;
}

/** An http(s):// base as it is; an s3:// one where s3-location.ts finds it, signed when it has keys. */
function locate(base: string, options: RemoteOptions): Target {
  if (!isS3Base(base)) {
    const url = parseRemoteUrl(base);
    return { url, shown: shownUrl(url) };
  }
  const s3 = locateS3(base, options.s3);
  const { credentials, region } = s3;
  return {
    url: s3.url,
    shown: s3.shown,
    ...(credentials !== undefined ? { sign: (request: SigningRequest) => signS3Request(request, credentials, region) } : {}),
  };
}

/** Ask the origin for the image's size and version (one-line errors naming it). */
async function probe(target: Target, options: RemoteOptions, log: RemoteLog): Promise<HttpOrigin> {
  const { url, shown } = target;
  try {
    const origin = await HttpOrigin.probe(url, {
      timeoutMs: options.timeoutMs ?? DEFAULT_REMOTE_TIMEOUT_MS,
      retries: options.retries ?? DEFAULT_REMOTE_RETRIES,
      onRetry: log.warn,
      shown,
      ...(target.sign !== undefined ? { sign: target.sign } : {}),
    });
    if (origin.identity.size === 0) {
      origin.close();
      throw codedError('EINVAL', 'the image is empty');
    }
    return origin;
  } catch (err) {
    throw cannotOpen(target, err);
  }
}

function identityOf(origin: HttpOrigin): BaseIdentity {
  return { size: origin.identity.size, fingerprint: remoteFingerprint(origin.identity) };
}

/** `err` as one line naming the image. */
function cannotOpen(target: Target, err: unknown): Error {
  const e = err as NodeJS.ErrnoException;
  const message = e.message.startsWith(target.shown) ? e.message : `${target.shown}: ${e.message}`;
  return codedError(e.code ?? 'EIO', `cannot open base image ${message}`);
}

/**
 * Probe the origin and open the block cache; a cache whose lock a sibling worker holds
 * (options.cacheHeldBySibling) gives a RemoteBaseElsewhere instead.
 */
async function openNew(target: Target, options: RemoteOptions, log: RemoteLog): Promise<RemoteBase | RemoteBaseElsewhere> {
  const origin = await probe(target, options, log);
  try {
    const identity = identityOf(origin);
    let cache: BlockCache;
    try {
      cache = await BlockCache.open({
        dir: options.cacheDir ?? defaultCacheDir(),
        stem: cacheStem(target.url),
        identity,
        blockSize: CACHE_BLOCK_SIZE,
        capacity: Math.max(MIN_CACHE_SIZE, options.cacheSize ?? identity.size),
        warn: log.warn,
      });
    } catch (err) {
      const holder = lockHolderOf(err);
      if (holder === undefined || options.cacheHeldBySibling?.(holder) !== true) throw err;
      origin.close();
      return new RemoteBaseElsewhere(target.shown, identity, `${cacheFiles(target, options)}.lock`);
    }
    const remote = new RemoteBase(origin, cache, identity, log);
    if (options.prefetch === true) remote.prefetch(log.info);
    return remote;
  } catch (err) {
    origin.close();
    throw cannotOpen(target, err);
  }
}
