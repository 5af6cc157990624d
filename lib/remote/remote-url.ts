// Which base names are URLs, and how a URL is shown: a base given as http:// or https:// is
// read from that server; anything else is a local path. User and password in the URL are sent
// (HTTP basic authentication) but never shown: logs, messages and the export's description
// get the URL without them.

import { codedError } from '../block/coded-error.js';

/** Whether `base` names a remote image (http://, https:// or s3://) rather than a file. */
export function isRemoteBase(base: string): boolean {
  return /^(https?|s3):\/\//i.test(base);
}

/** Parse a remote base URL; throws EINVAL with one line for anything it cannot fetch. */
export function parseRemoteUrl(base: string): URL {
  let url: URL;
  try {
    url = new URL(base);
  } catch {
    throw codedError('EINVAL', `remote base ${shownUrl(base)} is not a valid URL`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw codedError('EINVAL', `remote base ${shownUrl(base)}: only http:// and https:// are supported`);
  }
  if (url.pathname === '/' || url.pathname.endsWith('/')) {
    throw codedError('EINVAL', `remote base ${shownUrl(base)} names a directory, not an image file`);
  }
  url.hash = '';
  return url;
}

/** `url` without its user and password (what logs and messages show). */
export function shownUrl(url: string | URL): string {
  if (typeof url === 'string') {
    try {
      return shownUrl(new URL(url));
    } catch {
      return url.replace(/\/\/[^/@]*@/, '//');
    }
  }
  const copy = new URL(url.href);
  copy.username = '';
  copy.password = '';
  return copy.href;
}
