// The server-wide settings of a configuration file, one for each flag of the same name: who may
// connect (allow, max-connections), how long a handshake may take, the memory all clients share,
// the user and group to run as, the log, and where metrics are served. Each is checked as the
// flag is; a setting left out stays out, for the server's default.

import { LOG_FORMATS, type LogLevel } from '../log.js';
import { MAX_PAYLOAD } from '../protocol/constants.js';
import { validateConnectionLimit } from '../server/admission.js';
import type { ConfigMapping, ConfigValue } from './config-value.js';
import type { ServerConfig } from './server-config.js';
import { readAccount, readAllowList, readHostPort, readSize } from './setting-values.js';

/** The most a handshake may be given, as --handshake-timeout allows: a day. */
const MAX_HANDSHAKE_SECONDS = 86_400;
/** Every level, as a Record so that a level added to LogLevel must be added here too. */
const LEVELS: Readonly<Record<LogLevel, true>> = { debug: true, info: true, warn: true, error: true, silent: true };
const LOG_LEVELS = Object.keys(LEVELS) as LogLevel[];
const LOG_KEYS = ['level', 'format'] as const;

export type ServerSettings = Omit<ServerConfig, 'source' | 'listen' | 'exports' | 'tls'>;

/** The server-wide settings present in `top`, the file's top-level mapping. */
export function readServerSettings(top: ConfigMapping): ServerSettings {
  return {
    ...top.optional('allow', 'allow', readAllowList),
    ...top.optional('max-connections', 'maxConnections', readConnectionLimit),
    ...top.optional('handshake-timeout', 'handshakeTimeout', readHandshakeSeconds),
    ...top.optional('buffer-memory', 'bufferMemory', readBufferMemory),
    ...top.optional('user', 'user', (value) => readAccount(value, 'user')),
    ...top.optional('group', 'group', (value) => readAccount(value, 'group')),
    ...readLog(top.get('log')),
    ...top.optional('metrics', 'metrics', readHostPort),
  };
}

function readConnectionLimit(value: ConfigValue): number {
  const max = value.number('a number of connections');
  try {
    validateConnectionLimit(max);
  } catch (err) {
    value.fail((err as Error).message);
  }
  return max;
}

/** Seconds, whole or not (0.5), above 0 and at most a day. */
function readHandshakeSeconds(value: ConfigValue): number {
  const seconds = value.number('a number of seconds, such as 10');
  if (seconds <= 0 || seconds > MAX_HANDSHAKE_SECONDS) {
    value.fail(`expected a number of seconds above 0, at most ${MAX_HANDSHAKE_SECONDS}, not ${seconds}`);
  }
  return seconds;
}

function readBufferMemory(value: ConfigValue): number {
  return readSize(value, (bytes) =>
    bytes < MAX_PAYLOAD ? `${bytes} bytes is less than ${MAX_PAYLOAD >> 20}M, the largest request` : undefined,
  );
}

function readLog(value: ConfigValue | undefined): Pick<ServerSettings, 'logLevel' | 'logFormat'> {
  if (value === undefined) return {};
  const fields = value.mapping(LOG_KEYS, 'a mapping such as { level: info, format: json }');
  return {
    ...fields.optional('level', 'logLevel', (level) => level.oneOf(LOG_LEVELS)),
    ...fields.optional('format', 'logFormat', (format) => format.oneOf(LOG_FORMATS)),
  };
}
