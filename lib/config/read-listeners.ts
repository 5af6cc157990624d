// The `listen:` list: where the server accepts NBD clients. Each item is `tcp: HOST:PORT` or
// `unix: PATH`, the latter with the socket file's mode and group (--socket-mode, --socket-group).
// Two items on one address would fail at start-up with EADDRINUSE; here the error names both.

import type { ListenAddress } from '../server/listener.js';
import type { ConfigValue } from './config-value.js';
import type { ListenerConfig } from './server-config.js';
import { readAccount, readHostPort, readPath, readSocketMode } from './setting-values.js';

/** What a file can listen on (systemd's inherited sockets come from the environment, not a file). */
export type FileAddress = Extract<ListenAddress, { kind: 'tcp' | 'unix' }>;
export type FileListener = ListenerConfig & { readonly address: FileAddress };

const LISTENER_KEYS = ['tcp', 'unix', 'socket-mode', 'socket-group'] as const;
const UNIX_ONLY = ['socket-mode', 'socket-group'] as const;

/** The listeners in `value` (a non-empty list); unix paths resolved against `dir`. */
export function readListeners(value: ConfigValue, dir: string): FileListener[] {
  const items = value.list('a list of listeners, such as - tcp: 0.0.0.0:10809');
  if (items.length === 0) value.fail('the list is empty: the server needs somewhere to listen');
  const read = items.map((item) => ({ item, listener: readListener(item, dir) }));
  refuseSharedAddresses(read);
  return read.map(({ listener }) => listener);
}

function readListener(item: ConfigValue, dir: string): FileListener {
  const fields = item.mapping(LISTENER_KEYS, 'a listener: tcp: HOST:PORT or unix: PATH');
  const tcp = fields.get('tcp');
  const unix = fields.get('unix');
  if (tcp !== undefined && unix !== undefined) unix.fail('a listener is tcp: or unix:, not both: make it two items');
  if (tcp !== undefined) {
    for (const key of UNIX_ONLY) fields.get(key)?.fail('only a unix: listener has a socket file to set this on');
    return { address: { kind: 'tcp', ...readHostPort(tcp) } };
  }
  if (unix === undefined) return item.fail('a listener needs tcp: HOST:PORT or unix: PATH');
  return {
    address: { kind: 'unix', path: readPath(unix, dir) },
    ...fields.optional('socket-mode', 'socketMode', readSocketMode),
    ...fields.optional('socket-group', 'socketGroup', (group) => readAccount(group, 'group')),
  };
}

/** Refuse a second listener on an address already listed (TCP port 0 picks a new port each time). */
function refuseSharedAddresses(read: readonly { item: ConfigValue; listener: FileListener }[]): void {
  const seen = new Map<string, ConfigValue>();
  for (const { item, listener } of read) {
    const key = addressKey(listener.address);
    if (key === undefined) continue;
    const earlier = seen.get(key);
    if (earlier !== undefined) {
      item.fail(`the same address as ${earlier.path} on line ${earlier.line}: ${describeAddress(listener.address)}`);
    }
    seen.set(key, item);
  }
}

/** What makes two listeners collide; undefined for a TCP port 0, which never does. */
export function addressKey(address: FileAddress): string | undefined {
  if (address.kind === 'unix') return `unix:${address.path}`;
  return address.port === 0 ? undefined : `tcp:${describeAddress(address)}`;
}

/** `0.0.0.0:10809`, `[::1]:10809` or the socket path. */
export function describeAddress(address: FileAddress): string {
  if (address.kind === 'unix') return address.path;
  return address.host.includes(':') ? `[${address.host}]:${address.port}` : `${address.host}:${address.port}`;
}
