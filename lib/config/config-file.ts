// `nbd-cow serve --config FILE`: a YAML file (doc/config.md) read into a ServerConfig, every
// key checked for its type, its range and its rules with the other keys before anything starts.
// Whatever is wrong is one ConfigError naming the file, the line and the key:
//
//   /etc/nbd-cow/lab.yaml:14:5: exports.debian.block-size: 3000 is not a power of two from 512 to 1048576
//
// Paths are made absolute against the file's directory but not looked at: whether a base image
// or a certificate exists is found out when the server starts, as for the flags.

import { readFile } from 'node:fs/promises';
import { dirname, resolve } from 'node:path';
import { ConfigError } from './config-error.js';
import type { ConfigValue } from './config-value.js';
import { readExports } from './read-exports.js';
import { addressKey, describeAddress, type FileAddress, type FileListener, readListeners } from './read-listeners.js';
import { readServerSettings } from './read-settings.js';
import { readTls } from './read-tls.js';
import type { ServerConfig } from './server-config.js';
import { parseYamlDocument } from './yaml-document.js';

export const TOP_LEVEL_KEYS = [
  'listen',
  'tls',
  'allow',
  'max-connections',
  'handshake-timeout',
  'buffer-memory',
  'user',
  'group',
  'log',
  'metrics',
  'exports',
] as const;

/** Read and check the configuration file at `path`; a ConfigError says what is wrong and where. */
export async function loadConfigFile(path: string): Promise<ServerConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    throw new ConfigError({ file: path }, `cannot read the configuration file: ${describeReadError(err)}`);
  }
  return parseConfig(text, path);
}

/**
 * The configuration in `text`, read from `source` (named in errors as given; relative paths in
 * the file resolve against its directory).
 */
export function parseConfig(text: string, source: string): ServerConfig {
  const file = resolve(source);
  const dir = dirname(file);
  const root = parseYamlDocument(text, source);
  const top = root.mapping(TOP_LEVEL_KEYS, 'a mapping of settings, such as listen: and exports:');
  const listen = readListeners(top.require('listen', 'where to accept clients, such as - tcp: 0.0.0.0:10809'), dir);
  const tls = top.read('tls', (value) => readTls(value, dir), undefined);
  const settings = readServerSettings(top);
  const exports = readExports(top.require('exports', 'the images to serve, such as debian: { base: debian.img }'), {
    dir,
    tlsMode: tls?.mode ?? 'off',
  });
  const metrics = top.get('metrics');
  if (metrics !== undefined && settings.metrics !== undefined) refuseMetricsOnListener(metrics, settings.metrics, listen);
  return { source: file, listen, exports, ...(tls !== undefined ? { tls } : {}), ...settings };
}

/** Metrics and NBD cannot share a TCP address: the second bind would fail with EADDRINUSE. */
function refuseMetricsOnListener(
  value: ConfigValue,
  metrics: { host: string; port: number },
  listen: readonly FileListener[],
): void {
  const address: FileAddress = { kind: 'tcp', ...metrics };
  const key = addressKey(address);
  const clash = listen.findIndex((listener) => key !== undefined && addressKey(listener.address) === key);
  if (clash >= 0) value.fail(`${describeAddress(address)} is also listen[${clash}]'s address: metrics need a port of their own`);
}

/** `no such file`, `permission denied`, … from a failed read. */
function describeReadError(err: unknown): string {
  const code = (err as NodeJS.ErrnoException).code;
  if (code === 'ENOENT') return 'no such file (ENOENT)';
  if (code === 'EACCES') return 'permission denied (EACCES)';
  if (code === 'EISDIR') return 'it is a directory (EISDIR)';
  return (err as Error).message;
}
