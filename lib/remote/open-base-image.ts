// A base image by name: an http:// or https:// URL opens a remote base (open-remote-base.ts),
// anything else the local file (base-image.ts). Layers then stack on either alike
// (openImageStack's openBottom).

import { type BaseImage, openBase } from '../block/base-image.js';
import { openRemoteBase } from './open-remote-base.js';
import type { RemoteLog, RemoteOptions } from './remote-options.js';
import { isRemoteBase } from './remote-url.js';

const QUIET: RemoteLog = { warn: (message) => process.emitWarning(message), info: () => undefined };

/** Open the base named `base`, local or remote. */
export function openBaseImage(base: string, remote: RemoteOptions = {}, log: RemoteLog = QUIET): Promise<BaseImage> {
  return isRemoteBase(base) ? openRemoteBase(base, remote, log) : openBase(base);
}
