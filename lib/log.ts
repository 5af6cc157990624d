// A leveled logger that writes single lines to stderr, as text (`nbd-cow: warn: message`) or as
// pino's JSON lines (level, time, msg and the event's fields). The level comes from the server
// options (CLI -v / -q) or NBD_COW_LOG=debug|info|warn|error|silent.
//
// Clients decide much of what is logged (connections, refusals, failed requests), so info, warn
// and error lines are rate-limited in both formats: at most MAX_LINES_PER_SECOND a second, the
// rest counted and summed up in one line when the second is over. Debug lines, asked for with
// -v, are not limited. Text keeps its own writer (process.stderr, synchronous for files and pipes
// on Linux); JSON goes through pino to a synchronous fd 2, so no line is lost at exit and both
// keep their order with the process's other stderr output.

import { pino } from 'pino';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error' | 'silent';

export const LOG_FORMATS = ['text', 'json'] as const;
export type LogFormat = (typeof LOG_FORMATS)[number];

const RANK: Readonly<Record<LogLevel, number>> = { debug: 10, info: 20, warn: 30, error: 40, silent: 50 };

/** Structured fields of a line: JSON keys (snake_case); the text format shows only the message. */
export type LogFields = Readonly<Record<string, string | number | boolean | null | readonly string[]>>;

export interface Logger {
  debug(message: string, fields?: LogFields): void;
  info(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
  error(message: string, fields?: LogFields): void;
  enabled(level: LogLevel): boolean;
}

export interface LoggerOptions {
  /** `text` (default): `nbd-cow: [level: ]message` lines; `json`: pino's JSON lines. */
  readonly format?: LogFormat;
  readonly maxLinesPerSecond?: number;
  /** Text lines begin `nbd-cow[tag]:` (a worker's `worker PID`); JSON lines carry pino's pid anyway. */
  readonly tag?: string;
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

type LineLevel = Exclude<LogLevel, 'silent'>;

/** Where a line that passed the level and the rate limit goes, formatted. */
type Sink = (at: LineLevel, message: string, fields: LogFields | undefined) => void;

function textSink(write: (line: string) => void, tag: string | undefined): Sink {
  const prefix = tag === undefined ? 'nbd-cow: ' : `nbd-cow[${tag}]: `;
  return (at, message) => write(`${prefix}${at === 'info' ? '' : `${at}: `}${message}\n`);
}

/**
 * pino with the level as its name and ISO time, to `write` if given, else synchronously to fd 2.
 * createLogger filters levels itself (the summary of suppressed lines is always written).
 */
function jsonSink(write: ((line: string) => void) | undefined): Sink {
  const logger = pino(
    {
      name: 'nbd-cow',
      level: 'debug',
      formatters: { level: (label) => ({ level: label }) },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    write === undefined ? pino.destination({ fd: 2, sync: true }) : { write },
  );
  return (at, message, fields) => (fields === undefined ? logger[at](message) : logger[at](fields, message));
}

/**
 * A logger at `level`; lines go to `write` (default: stderr) as `options.format` says, at most
 * `options.maxLinesPerSecond` a second at info and above.
 */
export function createLogger(level: LogLevel, write?: (line: string) => void, options: LoggerOptions = {}): Logger {
  const maxLinesPerSecond = options.maxLinesPerSecond ?? MAX_LINES_PER_SECOND;
  const sink =
    options.format === 'json' ? jsonSink(write) : textSink(write ?? ((line) => process.stderr.write(line)), options.tag);
  const threshold = RANK[level];
  let secondStart = 0;
  let written = 0;
  let suppressed = 0;
  const emit = (at: LineLevel, message: string, fields: LogFields | undefined): void => {
    if (RANK[at] < threshold) return;
    if (at !== 'debug') {
      const now = performance.now();
      if (now - secondStart >= 1000) {
        if (suppressed > 0) {
          sink('warn', `${suppressed} log line(s) suppressed (more than ${maxLinesPerSecond} a second)`, { suppressed });
        }
        secondStart = now;
        written = 0;
        suppressed = 0;
      }
      if (++written > maxLinesPerSecond) {
        suppressed++;
        return;
      }
    }
    sink(at, message, fields);
  };
  return {
    debug: (message, fields) => emit('debug', message, fields),
    info: (message, fields) => emit('info', message, fields),
    warn: (message, fields) => emit('warn', message, fields),
    error: (message, fields) => emit('error', message, fields),
    enabled: (at) => RANK[at] >= threshold,
  };
}
