// The URI a client uses to reach an export (qemu and libnbd syntax: nbd://, nbd+unix://, and
// nbds:// with TLS).

import type { ListenAddress } from './listener.js';

/**
 * The URI a client uses for `address` and `exportName` (nbds: with TLS). An inherited socket whose
 * address could not be told (abstract, no /proc: inherited-socket.ts) has no URI: it is described.
 */
export function formatUri(address: ListenAddress, exportName: string, tls = false): string {
  const name = encodeURIComponent(exportName);
  const scheme = tls ? 'nbds' : 'nbd';
  if (address.kind === 'inherited') {
    const which = address.name === undefined ? '' : ` (${address.name})`;
    return `${scheme}: inherited socket fd ${address.fd}${which}, export ${JSON.stringify(exportName)}`;
  }
  if (address.kind === 'unix') return `${scheme}+unix:///${name}?socket=${encodeURIComponent(address.path)}`;
  const host = address.host.includes(':') ? `[${address.host}]` : address.host;
  return `${scheme}://${host}:${address.port}/${name}`;
}
