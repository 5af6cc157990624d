// The fuzzer's settings, from the environment (fuzz/README.md has the table). A bad value is one
// line on stderr and exit 2, before anything starts.

import { randomInt } from 'node:crypto';

export interface ReplayKey {
  readonly seed: number;
  readonly index: number;
}

export interface Settings {
  readonly streams: number;
  readonly seed: number;
  /** FUZZ_SEED was not given: the seed was drawn at random (printed, to run it again). */
  readonly seedDrawn: boolean;
  readonly concurrency: number;
  readonly batch: number;
  /** FUZZ_REPLAY: run only these streams. */
  readonly replay: readonly ReplayKey[];
  /** Most RSS growth after warm-up, in MiB (rss-judge.ts). */
  readonly rssGrowthMiB: number;
  /** Every stream must finish within this. */
  readonly streamDeadlineMs: number;
  /** A batch must finish within this. */
  readonly batchTimeoutMs: number;
  /** The server's --handshake-timeout, in seconds. */
  readonly handshakeTimeoutS: number;
  /** FUZZ_SERVER_LOG: the server's log level (server-under-test.ts). */
  readonly serverLog: 'quiet' | 'info';
  /** Keep the run directory (base, overlays, server log) even when the run is clean. */
  readonly keep: boolean;
}

class SettingError extends Error {}

function integer(env: NodeJS.ProcessEnv, name: string, fallback: number, min: number, max = Number.MAX_SAFE_INTEGER): number {
  const text = env[name];
  if (text === undefined || text === '') return fallback;
  const value = Number(text.replace(/_/g, ''));
  if (!Number.isInteger(value) || value < min || value > max) {
    throw new SettingError(`${name}=${text}: expected a whole number from ${min} to ${max}`);
  }
  return value;
}

function replayKeys(text: string | undefined): ReplayKey[] {
  if (text === undefined || text === '') return [];
  return text.split(',').map((key) => {
    const match = /^\s*(\d+):(\d+)\s*$/.exec(key);
    if (match === null) throw new SettingError(`FUZZ_REPLAY=${text}: expected seed:index[,seed:index…]`);
    return { seed: Number(match[1]), index: Number(match[2]) };
  });
}

function serverLog(text: string | undefined): 'quiet' | 'info' {
  if (text === undefined || text === '' || text === 'quiet') return 'quiet';
  if (text === 'info') return 'info';
  throw new SettingError(`FUZZ_SERVER_LOG=${text}: expected quiet or info`);
}

function read(env: NodeJS.ProcessEnv): Settings {
  const seedGiven = env['FUZZ_SEED'] !== undefined && env['FUZZ_SEED'] !== '';
  const streams = integer(env, 'FUZZ_STREAMS', 1_000_000, 1);
  const concurrency = integer(env, 'FUZZ_CONCURRENCY', 64, 1, 512);
  const batch = integer(env, 'FUZZ_BATCH', 10_000, 1);
  const streamDeadlineMs = integer(env, 'FUZZ_STREAM_DEADLINE_S', 20, 5) * 1000;
  // A stream takes about 50 ms of its slot (quiet window, closing); the default allows ten times that.
  const batchTimeoutMs = integer(env, 'FUZZ_BATCH_TIMEOUT_S', Math.max(120, Math.ceil((batch / concurrency) * 0.5)), 10) * 1000;
  return {
    streams,
    seed: seedGiven ? integer(env, 'FUZZ_SEED', 0, 0, 0xffffffff) : randomInt(0, 0x7fffffff),
    seedDrawn: !seedGiven,
    concurrency,
    batch,
    replay: replayKeys(env['FUZZ_REPLAY']),
    rssGrowthMiB: integer(env, 'FUZZ_RSS_GROWTH_MIB', 64, 1),
    streamDeadlineMs,
    batchTimeoutMs,
    handshakeTimeoutS: integer(env, 'FUZZ_HANDSHAKE_TIMEOUT_S', 2, 1, 60),
    serverLog: serverLog(env['FUZZ_SERVER_LOG']),
    keep: env['FUZZ_KEEP'] === '1',
  };
}

/** The settings, or one line on stderr and exit 2. */
export function readSettings(env: NodeJS.ProcessEnv): Settings {
  try {
    return read(env);
  } catch (err) {
    if (!(err instanceof SettingError)) throw err;
    process.stderr.write(`fuzz: ${err.message}\n`);
    process.exit(2);
  }
}
