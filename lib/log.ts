// A leveled logger that writes single lines to stderr. The level comes from the server
// options (CLI -v / -q) or NBD_COW_LOG=debug|info|warn|error|silent.
//
// Clients decide much of what is logged (refusals, failed requests), so info, warn and error
// lines are rate-limited: at most MAX_LINES_PER_SECOND a second, the rest counted and summed up
// in one line when the second is over. Debug lines, asked for with -v, are not limited.

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

/** A flood of client-made lines must not fill the disk: the most written in one second. */
export const MAX_LINES_PER_SECOND = 100;

export function createLogger(
  level: LogLevel,
  write: (line: string) => void = (line) => process.stderr.write(line),
  maxLinesPerSecond = MAX_LINES_PER_SECOND,
): Logger {
  const threshold = RANK[level];
  let secondStart = 0;
  let written = 0;
  let suppressed = 0;
  const emit = (at: LogLevel, message: string): void => {
    if (RANK[at] < threshold) return;
    if (at !== 'debug') {
      const now = performance.now();
      if (now - secondStart >= 1000) {
        if (suppressed > 0)
          write(`nbd-cow: warn: ${suppressed} log line(s) suppressed (more than ${maxLinesPerSecond} a second)\n`);
        secondStart = now;
        written = 0;
        suppressed = 0;
      }
      if (++written > maxLinesPerSecond) {
        suppressed++;
        return;
      }
    }
    write(`nbd-cow: ${at === 'info' ? '' : `${at}: `}${message}\n`);
  };
  return {
    debug: (message) => emit('debug', message),
    info: (message) => emit('info', message),
    warn: (message) => emit('warn', message),
    error: (message) => emit('error', message),
    enabled: (at) => RANK[at] >= threshold,
  };
}
