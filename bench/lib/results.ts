// The shape of bench/results/latest.json: built by bench.ts, rendered by report.ts. Key order
// in these types is the order in the JSON.

import type { NoisyResult } from './noisy.js';
import type { DiskUsage, OpenFiles } from './proc.js';
import type { Settings } from './settings.js';
import type { FioResult, SessionsResult } from './workloads.js';

export type Status = 'ok' | 'fail' | 'skip';

/** One server × workload cell: fio's numbers or the sessions' numbers, and the server's cost. */
export interface WorkloadEntry extends Partial<FioResult>, Partial<SessionsResult> {
  status: Status;
  transport?: string;
  note?: string;
  server_peak_rss_kib?: number | null;
  server_cpu_s?: number | null;
  wall_s?: number | null;
  server_cpu_pct?: number;
  /** noisy-neighbour's numbers (bench/noisy_neighbour.py). */
  noisy?: NoisyResult;
  /** ROUNDS > 1: the headline metric of every ok round, in the order they ran (the cell is their median). */
  round_values?: number[];
}

export interface ServerRecord {
  readonly name: string;
  readonly cow: boolean;
  readonly variant: boolean;
  /** The command line as first started, temp paths as $TMP; null until started. */
  command: string | null;
  readonly notes: string;
  readonly workloads: Record<string, WorkloadEntry>;
}

/** The headline metrics of the table. */
export type MetricKey = 'MiB_per_s' | 'iops' | 'lat_mean_us' | 'lat_p99_us' | 'sessions_per_s';

export interface RatioEntry {
  readonly metric: MetricKey;
  readonly lower_is_better: boolean;
  readonly ours: number | null;
  readonly best_cow_anchor: string | null;
  readonly best_cow_value: number | null;
  readonly ratio_to_best_cow: number | null;
  readonly variants: Readonly<Record<string, number | null>>;
  readonly memory_value: number | null;
  readonly ratio_to_memory: number | null;
  readonly p99_ratio_to_best_cow?: number | null;
  readonly p99_ratio_to_memory?: number | null;
}

/** A scale phase that ran (status 'fail' if the server died or nothing opened). */
export interface ScaleMeasured {
  readonly status: 'ok' | 'fail';
  readonly mode: 'write' | 'read';
  readonly open: number;
  readonly errors: number;
  readonly first_error: string | null;
  readonly mismatches: number;
  readonly open_seconds: number | null;
  readonly bytes_written: number;
  readonly rss_before_kib: number | null;
  readonly rss_max_kib: number;
  readonly rss_idle_kib: number | null;
  readonly rss_after_close_kib: number | null;
  readonly vm_hwm_kib: number | null;
  readonly rss_per_connection_bytes: number | null;
  readonly max_open_fds: number;
  readonly overlay: DiskUsage;
  readonly open_fd_overlay: OpenFiles | null;
  readonly overlay_after_close: DiskUsage;
  readonly probe_session_ms: number | null;
  readonly server_cpu_s: number | null;
  note?: string;
}

/** A scale phase whose server did not start. */
export interface ScaleNotStarted {
  readonly status: 'fail';
  readonly note: string;
}

export type ScalePhase = ScaleMeasured | ScaleNotStarted;

export interface ScaleResults {
  readonly connections: number;
  readonly transport: string;
  readonly write_kib: readonly number[];
  readonly idle_seconds: number;
  readonly writers: ScalePhase;
  readonly readers: ScalePhase;
  /** The same phases for each OURS_VARIANTS server (e.g. `--workers 2`: RSS over all its processes). */
  readonly variants?: readonly { readonly server: string; readonly writers: ScalePhase; readonly readers: ScalePhase }[];
}

export interface BaseInfo {
  method: string;
  size_bytes: number;
  sha256: string;
  unchanged: boolean;
  sha256_after?: string;
}

export interface Results {
  readonly schema: 1;
  readonly generated: string;
  /** The settings without `results` (JSON.stringify drops the undefined key). */
  readonly settings: Omit<Settings, 'results'> & { readonly results?: undefined };
  readonly host: { readonly cpus: number; readonly mem_gib: number; readonly kernel: string; readonly loadavg_start: string };
  versions: Record<string, string | null>;
  readonly base: BaseInfo;
  readonly servers: ServerRecord[];
  scale: ScaleResults | null;
  ratios: Record<string, RatioEntry>;
  readonly messages: string[];
  wall_s?: number;
  exit_code?: number;
  memory_reference?: string;
}
