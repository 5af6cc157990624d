// A leveled logger that writes single lines to stderr. The level comes from the server
// options (CLI -v / -q) or NBD_COW_LOG=debug|info|warn|error|silent.

export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'silent';

const RANK: Readonly<Record<LogLevel, number>> = { debug: 10, info: 20, warn: 30, error: 40, silent: 50 };

export interface Logger {
  debug(message: string): void;
  info(message: string): void;
  warn(message: string): void;
  error(message: string): void;
  enabled(level: LogLevel): boolean;
}

export function isLogLevel(value: string): value is LogLevel {
  return Object.hasOwn(RANK, value);
}

/** The level named by NBD_COW_LOG, or `fallback`. */
export function levelFromEnv(fallback: LogLevel): LogLevel {
  const value = process.env['NBD_COW_LOG'];
  return value !== undefined && isLogLevel(value) ? value : fallback;
}

export function createLogger(level: LogLevel, write: (line: string) => void = (line) => process.stderr.write(line)): Logger {
  const threshold = RANK[level];
  const emit = (at: LogLevel, message: string): void => {
    if (RANK[at] >= threshold) write(`nbd-cow: ${at === 'info' ? '' : `${at}: `}${message}\n`);
  };
  return {
    debug: (message) => emit('debug', message),
    info: (message) => emit('info', message),
    warn: (message) => emit('warn', message),
    error: (message) => emit('error', message),
    enabled: (at) => RANK[at] >= threshold,
  };
}
