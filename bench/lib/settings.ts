// The benchmark's settings, read from the environment and checked before anything starts
// (bench/README.md, "Settings"). A bad value ends the run with exit status 1.

import { join, resolve } from 'node:path';
import { die } from './log.js';
import { OURS } from './report.js';
import { SERVERS, type Transport } from './servers.js';
import { FIO_WORKLOADS } from './workloads.js';

/** The keys are the JSON report's (`settings`), in its order. */
export interface Settings {
  readonly quick: boolean;
  readonly base_mb: number;
  readonly runtime: number;
  readonly ramp: number;
  readonly session_seconds: number;
  /** noisy-neighbour: seconds per phase, and the warm region in MiB. */
  readonly noisy_seconds: number;
  readonly noisy_warm_mb: number;
  readonly scale_connections: number;
  readonly scale_idle_seconds: number;
  readonly scale_concurrency: number;
  /** SCALE_WRITE_KIB split at '-': MIN and MAX once checked. */
  readonly scale_write_kib: readonly number[];
  readonly anchors: readonly string[];
  readonly workloads: readonly string[];
  readonly transport: Transport;
  readonly ours_args: readonly string[];
  readonly ours_variants: readonly (readonly string[])[];
  readonly ready_timeout_s: number;
  /** Runs of each workload per server, in turn; each cell is the median run (rounds.ts). */
  readonly rounds: number;
  /** The JSON path; left out of the report. */
  readonly results: string;
  readonly keep_tmp: boolean;
  readonly prime_memory: boolean;
  readonly warm_base: boolean;
}

export const DEFAULT_ANCHORS = ['nbd-server', 'qemu-nbd', 'nbdkit-cow', 'nbdkit-memory'];
export const DEFAULT_WORKLOADS = [
  'seq-read',
  'seq-write',
  'rand-read',
  'rand-write',
  'rand-read-qd1',
  'sessions',
  'sessions@unix',
  'scale',
];

/** A workload name split into its base and transport (`rand-read@unix`). */
export function splitWorkload(w: string, defaultTransport: Transport): { base: string; transport: Transport } {
  const [base = w, transport] = w.split('@');
  return { base, transport: transport === 'tcp' || transport === 'unix' ? transport : defaultTransport };
}

const words = (s: string): string[] => s.split(/\s+/).filter(Boolean);

/** Settings from `env`; `defaultResults` is the JSON path when RESULTS is not set. */
export function readSettings(env: NodeJS.ProcessEnv, defaultResults: string): Settings {
  const quick = env['BENCH_QUICK'] === '1';
  const intSetting = (name: string, def: number): number => {
    const v = env[name];
    if (v === undefined || v === '') return def;
    if (!/^\d+$/.test(v)) die(`${name} must be a whole number, got '${v}'`);
    return Number(v);
  };
  const settings: Settings = {
    quick,
    base_mb: intSetting('BASE_MB', quick ? 256 : 1024),
    runtime: intSetting('RUNTIME', quick ? 3 : 10),
    ramp: intSetting('RAMP', quick ? 1 : 2),
    session_seconds: intSetting('SESSION_SECONDS', quick ? 2 : 5),
    noisy_seconds: intSetting('NOISY_SECONDS', quick ? 3 : 5),
    noisy_warm_mb: intSetting('NOISY_WARM_MB', 64),
    scale_connections: intSetting('SCALE_CONNECTIONS', 1000),
    scale_idle_seconds: intSetting('SCALE_IDLE', quick ? 2 : 5),
    scale_concurrency: intSetting('SCALE_CONCURRENCY', 32),
    scale_write_kib: (env['SCALE_WRITE_KIB'] ?? '4-64').split('-').map(Number),
    anchors: words(env['SERVERS'] ?? DEFAULT_ANCHORS.join(' ')),
    workloads: words(env['WORKLOADS'] ?? DEFAULT_WORKLOADS.join(' ')),
    transport: 'tcp',
    ours_args: words(env['OURS_ARGS'] ?? ''),
    // Extra nbd-cow rows, one per flag set ("--block-size 16K; --block-size 64K"): compared with
    // the anchors in the same run, never counted as an anchor.
    ours_variants: (env['OURS_VARIANTS'] ?? '')
      .split(';')
      .map((v) => words(v.trim()))
      .filter((v) => v.length > 0),
    ready_timeout_s: intSetting('READY_TIMEOUT', 20),
    rounds: Math.max(1, intSetting('ROUNDS', 1)),
    results: resolve(env['RESULTS'] ?? defaultResults),
    keep_tmp: env['KEEP_TMP'] === '1',
    prime_memory: env['PRIME_MEMORY'] !== '0',
    warm_base: env['WARM_BASE'] !== '0',
  };
  check(settings, env['SCALE_WRITE_KIB']);
  return settings;
}

function check(settings: Settings, scaleWriteKiB: string | undefined): void {
  const [lo, hi] = settings.scale_write_kib;
  if (lo === undefined || hi === undefined || !(lo >= 4 && hi >= lo && lo % 4 === 0 && hi % 4 === 0))
    die(`SCALE_WRITE_KIB must be MIN-MAX in KiB, multiples of 4, got '${scaleWriteKiB}'`);
  if (settings.base_mb < 1) die('BASE_MB must be at least 1');
  if (settings.noisy_seconds < 1) die('NOISY_SECONDS must be at least 1');
  if (settings.workloads.some((w) => w.startsWith('noisy-neighbour')) && settings.noisy_warm_mb * 2 > settings.base_mb)
    die('NOISY_WARM_MB must be at most half of BASE_MB (the rest is the cold part)');
  for (const a of settings.anchors) {
    if (a === OURS) continue; // nbd-cow always runs; naming it is harmless
    if (SERVERS[a] === undefined)
      die(
        `unknown server '${a}' in SERVERS (known: ${Object.keys(SERVERS)
          .filter((n) => n !== OURS)
          .join(', ')})`,
      );
  }
  const seen = new Set<string>();
  for (const w of settings.workloads) {
    const [base = w, transport] = w.split('@');
    if (FIO_WORKLOADS[base] === undefined && !['sessions', 'scale', 'noisy-neighbour'].includes(base))
      die(`unknown workload '${w}'`);
    if (transport !== undefined && transport !== 'tcp' && transport !== 'unix') die(`unknown transport in '${w}' (tcp or unix)`);
    if (seen.has(w)) die(`workload '${w}' named twice`);
    seen.add(w);
  }
}

/** SCALE_WRITE_KIB as checked by readSettings: [MIN, MAX]. */
export function scaleWriteRange(settings: Settings): readonly [number, number] {
  const [lo = 4, hi = 64] = settings.scale_write_kib;
  return [lo, hi];
}

/** The JSON path's default: bench/results/latest.json under the checkout. */
export const defaultResultsPath = (root: string): string => join(root, 'bench', 'results', 'latest.json');
