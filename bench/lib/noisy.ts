// The noisy-neighbour workload: a QD1 4 KiB reader of a warm region, alone and beside a reader
// of the cold rest of the base (64 KiB, 16 in flight). The clients are python3-libnbd
// (bench/noisy_neighbour.py), spawned with a bounded time; its JSON is parsed here.

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';

/** One phase's latencies as the script reports them (µs). */
export interface NoisyPhase {
  readonly reads: number;
  readonly measured_s: number;
  readonly iops: number | null;
  readonly lat_mean_us: number | null;
  readonly lat_p50_us: number | null;
  readonly lat_p99_us: number | null;
  readonly lat_p999_us: number | null;
  readonly lat_max_us: number | null;
}

export interface NoisyResult {
  readonly warm_bytes: number;
  readonly cold_bytes: number;
  readonly seconds: number;
  readonly cold_bs: number;
  readonly cold_qd: number;
  /** fincore of the base after the drop: about warm_bytes if the drop worked. */
  readonly resident_after_drop_bytes: number | null;
  readonly alone: NoisyPhase;
  readonly beside_cold: NoisyPhase;
  readonly cold_reader: NoisyPhase & { readonly MiB_per_s: number | null; readonly wraps: number; readonly blocks: number };
  readonly resident_at_end_bytes: number | null;
}

export interface NoisyOptions {
  /** A python3 that can `import nbd` (see findPython). */
  readonly python: string;
  readonly script: string;
  readonly uri: string;
  readonly base: string;
  readonly size: number;
  readonly warmBytes: number;
  readonly seconds: number;
  readonly coldBs: number;
  readonly coldQd: number;
  readonly logFd: number;
  readonly clients?: Set<ChildProcess>;
  readonly env?: NodeJS.ProcessEnv | undefined;
}

/**
 * The python3 to run the script with: NOISY_PYTHON if set, else the first of `python3` and
 * `/usr/bin/python3` that imports nbd (a pyenv python3 on PATH does not see Debian's
 * python3-libnbd). Null if none does.
 */
export function findPython(env: NodeJS.ProcessEnv): string | null {
  const candidates = env['NOISY_PYTHON'] ? [env['NOISY_PYTHON']] : ['python3', '/usr/bin/python3'];
  for (const py of candidates) {
    const r = spawnSync(py, ['-c', 'import nbd'], { stdio: 'ignore', timeout: 20000 });
    if (r.status === 0) return py;
  }
  return null;
}

/** Run the script's main role; resolves with its JSON, rejects with the reason. */
export function runNoisy(options: NoisyOptions): Promise<NoisyResult> {
  const { python, script, uri, base, size, warmBytes, seconds, coldBs, coldQd, logFd } = options;
  const clients = options.clients ?? new Set<ChildProcess>();
  const args = [
    '-u',
    script,
    'main',
    uri,
    base,
    String(size),
    String(warmBytes),
    String(seconds),
    String(coldBs),
    String(coldQd),
  ];
  return new Promise((resolve, reject) => {
    const child = spawn(python, args, { stdio: ['ignore', 'pipe', logFd], env: options.env ?? process.env });
    clients.add(child);
    let out = '';
    child.stdout?.on('data', (d: Buffer) => {
      out += d.toString();
    });
    // Warming 64 MiB, two phases and the cold reader's start: minutes would mean a hang.
    const timer = setTimeout(() => child.kill('SIGKILL'), (2 * seconds + 120) * 1000);
    child.once('error', (e) => {
      clearTimeout(timer);
      clients.delete(child);
      reject(e);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      clients.delete(child);
      const line = out.trim().split('\n').pop() ?? '';
      if (code !== 0) {
        reject(new Error(`noisy_neighbour.py exited with ${code ?? signal}`));
        return;
      }
      try {
        resolve(JSON.parse(line) as NoisyResult);
      } catch {
        reject(new Error(`noisy_neighbour.py printed no JSON: ${line.slice(0, 200)}`));
      }
    });
  });
}
