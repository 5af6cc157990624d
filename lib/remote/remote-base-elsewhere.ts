// A remote base whose block cache another worker of this server holds (`serve --workers N`,
// doc/workers.md). A cache has one owner (its lock file names the pid), so one worker holds
// it and serves every connection to the exports on that base; the other workers hand those
// connections to it at their GO, as they do for a named overlay another worker has open
// (export-backing.ts). Here they keep only what answers the handshake before the GO: the
// image's size and identity, asked of the origin. Nothing is ever read through it: a device is
// never opened on it, so each data call is refused.

import type { BaseIdentity, BaseImage } from '../block/base-image.js';
import { codedError } from '../block/coded-error.js';

export class RemoteBaseElsewhere implements BaseImage {
  readonly path: string;
  readonly identity: BaseIdentity;
  readonly size: number;
  readonly writable = false;
  /** The cache's lock file: it names the worker that holds the cache now. */
  readonly cacheLock: string;

  constructor(path: string, identity: BaseIdentity, cacheLock: string) {
    this.path = path;
    this.identity = identity;
    this.size = identity.size;
    this.cacheLock = cacheLock;
  }

  #refuse(): Promise<never> {
    return Promise.reject(
      codedError('EAGAIN', `${this.path} is served by the worker holding its block cache (lock file ${this.cacheLock})`),
    );
  }

  read(): Promise<void> {
    return this.#refuse();
  }
  write(): Promise<void> {
    return this.#refuse();
  }
  zero(): Promise<void> {
    return this.#refuse();
  }
  trim(): Promise<void> {
    return this.#refuse();
  }
  flush(): Promise<void> {
    return this.#refuse();
  }
  cache(): Promise<void> {
    return this.#refuse();
  }
  extents(): Promise<never> {
    return this.#refuse();
  }
  async close(): Promise<void> {}
}
