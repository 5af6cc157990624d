// Markdown report and ratio computation from the results object that bench.ts builds.

import type { NoisyPhase } from './noisy.js';
import type { MetricKey, RatioEntry, Results, ScalePhase, ServerRecord, WorkloadEntry } from './results.js';

export const OURS = 'nbd-cow';
export const MEMORY = 'nbdkit-memory';

interface Headline {
  readonly key: MetricKey;
  /** The second number of the cell (rand-read QD1: p99 beside the mean). */
  readonly key2?: MetricKey;
  readonly label: string;
  readonly lowerBetter: boolean;
}

/** Headline metric of a workload (name without @transport). */
export function headline(workload: string): Headline | null {
  const base = workload.split('@')[0];
  switch (base) {
    case 'seq-read':
    case 'seq-write':
      return { key: 'MiB_per_s', label: 'MiB/s', lowerBetter: false };
    case 'rand-read':
    case 'rand-write':
    case 'rand-read-4c':
    case 'rand-write-4c':
    case 'rand-read-16c':
    case 'rand-write-16c':
      return { key: 'iops', label: 'IOPS', lowerBetter: false };
    case 'boot-4c':
    case 'boot-read-16c':
      return { key: 'MiB_per_s', label: 'MiB/s', lowerBetter: false };
    case 'rand-read-qd1':
      return { key: 'lat_mean_us', key2: 'lat_p99_us', label: 'mean / p99 µs', lowerBetter: true };
    case 'sessions':
      return { key: 'sessions_per_s', label: 'sessions/s', lowerBetter: false };
    default:
      return null;
  }
}

function columnLabel(workload: string, h: Headline, defaultTransport: string): string {
  const [base, transport = defaultTransport] = workload.split('@');
  const name = base === 'rand-read-qd1' ? 'rand-read QD1' : base;
  const t = base === 'sessions' || transport !== defaultTransport ? ` (${transport})` : '';
  return base === 'sessions' ? `${h.label}${t}` : `${name}${t} ${h.label}`;
}

/** "Speed" ratio ours : other, > 1 means nbd-cow is better (latency: other ÷ ours). */
function speedRatio(ours: number | null | undefined, other: number | null | undefined, lowerBetter: boolean): number | null {
  if (ours == null || other == null || ours === 0 || other === 0) return null;
  return Math.round((lowerBetter ? other / ours : ours / other) * 1000) / 1000;
}

/** A server's `key` in workload `w` if that cell is ok and has it, else null. */
function metric(s: ServerRecord | undefined, w: string, key: MetricKey): number | null {
  const entry = s?.workloads[w];
  return entry?.status === 'ok' ? (entry[key] ?? null) : null;
}

/** Per workload: nbd-cow against the best copy-on-write anchor and against nbdkit-memory. */
export function computeRatios(results: Results, workloads: readonly string[]): Record<string, RatioEntry> {
  const byName = new Map(results.servers.map((s) => [s.name, s]));
  const ours = byName.get(OURS);
  const mem = byName.get(MEMORY);
  const out: Record<string, RatioEntry> = {};
  for (const w of workloads) {
    const h = headline(w);
    if (!h) continue;
    const oursValue = metric(ours, w, h.key);
    let best: { name: string; value: number } | null = null;
    for (const s of results.servers) {
      if (s.name === OURS || !s.cow) continue;
      const v = metric(s, w, h.key);
      if (v === null) continue;
      if (best === null || (h.lowerBetter ? v < best.value : v > best.value)) best = { name: s.name, value: v };
    }
    // nbd-cow variants (OURS_VARIANTS), each against the same best anchor.
    const variants: Record<string, number | null> = {};
    for (const s of results.servers) {
      if (s.variant) variants[s.name] = speedRatio(metric(s, w, h.key), best?.value, h.lowerBetter);
    }
    const memoryValue = metric(mem, w, h.key);
    const entry: RatioEntry = {
      metric: h.key,
      lower_is_better: h.lowerBetter,
      ours: oursValue,
      best_cow_anchor: best?.name ?? null,
      best_cow_value: best?.value ?? null,
      ratio_to_best_cow: speedRatio(oursValue, best?.value, h.lowerBetter),
      variants,
      memory_value: memoryValue,
      ratio_to_memory: speedRatio(oursValue, memoryValue, h.lowerBetter),
    };
    if (h.key2) {
      const o2 = metric(ours, w, h.key2);
      const b2 = best ? byName.get(best.name)?.workloads[w]?.[h.key2] : null;
      out[w] = {
        ...entry,
        p99_ratio_to_best_cow: speedRatio(o2, b2, true),
        p99_ratio_to_memory: speedRatio(o2, metric(mem, w, h.key2), true),
      };
    } else {
      out[w] = entry;
    }
  }
  return out;
}

function fmt(x: number | null | undefined): string {
  if (x === null || x === undefined) return '–';
  const a = Math.abs(x);
  const digits = a >= 100 ? 0 : a >= 10 ? 1 : 2;
  return x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

const fmtRatio = (r: number | null | undefined): string => (r === null || r === undefined ? '–' : `${r.toFixed(2)}×`);

function fmtBytes(b: number | null | undefined): string {
  if (b === null || b === undefined) return '–';
  if (b === 0) return '0';
  const units = ['B', 'KiB', 'MiB', 'GiB'];
  let i = 0;
  let v = b;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return `${fmt(v)} ${units[i]}`;
}

function cell(r: WorkloadEntry | undefined, h: Headline): string {
  if (!r) return '';
  if (r.status !== 'ok') return r.status.toUpperCase();
  let s = fmt(r[h.key]);
  if (h.key2) s += ` / ${fmt(r[h.key2])}`;
  if (r.sessions !== undefined && ((r.errors ?? 0) > 0 || (r.mismatches ?? 0) > 0))
    s += ` (${r.errors} err, ${r.mismatches} bad)`;
  return s;
}

export function renderMarkdown(results: Results): string {
  const { settings } = results;
  const columns = settings.workloads.flatMap((w) => {
    const h = headline(w);
    return h ? [{ w, h }] : [];
  });
  const out: string[] = [];
  const p = (s = ''): void => {
    out.push(s);
  };
  p('## nbd-cow benchmark');
  p();
  p(`- date (UTC): ${results.generated}`);
  p(
    `- host: ${results.host.cpus} CPUs, ${results.host.mem_gib} GiB RAM, kernel ${results.host.kernel}; load average at start ${results.host.loadavg_start}`,
  );
  p(
    `- settings: BASE_MB=${settings.base_mb} RUNTIME=${settings.runtime} RAMP=${settings.ramp} SESSION_SECONDS=${settings.session_seconds} ` +
      `SCALE_CONNECTIONS=${settings.scale_connections}${settings.rounds > 1 ? ` ROUNDS=${settings.rounds}` : ''}${settings.quick ? ' (BENCH_QUICK=1)' : ''}${settings.ours_args.length ? ` OURS_ARGS="${settings.ours_args.join(' ')}"` : ''}`,
  );
  p(
    `- versions: ${Object.entries(results.versions)
      .map(([k, v]) => `${k} ${v}`)
      .join('; ')}`,
  );
  p(
    `- base: ${settings.base_mb} MiB of pseudo-random bytes (${results.base.method}), sha256 ${results.base.sha256.slice(0, 16)}…, ${results.base.unchanged ? 'unchanged after every server' : '**CHANGED**'}`,
  );
  p(`- wall time: ${results.wall_s} s`);
  p();

  if (columns.length > 0) {
    p('### Fresh server and empty overlay per workload; one client (`-4c`, `-16c`: 4, 16 connections, summed)');
    p();
    const header = ['server', ...columns.map(({ w, h }) => columnLabel(w, h, settings.transport))];
    p(`| ${header.join(' | ')} |`);
    p(`|${header.map(() => '---').join('|')}|`);
    for (const s of results.servers) {
      p(`| ${s.name === OURS ? `**${s.name}**` : s.name} | ${columns.map(({ w, h }) => cell(s.workloads[w], h)).join(' | ')} |`);
    }
    const ratios = results.ratios;
    const rcell = (
      w: string,
      key: 'ratio_to_best_cow' | 'ratio_to_memory',
      key2: 'p99_ratio_to_best_cow' | 'p99_ratio_to_memory',
      withName: boolean,
    ): string => {
      const r = ratios[w];
      if (!r) return '–';
      let s = fmtRatio(r[key]);
      if (r[key2] !== undefined) s += ` / ${fmtRatio(r[key2])}`;
      if (withName && r.best_cow_anchor) s += ` (${r.best_cow_anchor})`;
      return s;
    };
    p(
      `| nbd-cow : best CoW anchor | ${columns.map(({ w }) => rcell(w, 'ratio_to_best_cow', 'p99_ratio_to_best_cow', true)).join(' | ')} |`,
    );
    p(
      `| nbd-cow : nbdkit-memory | ${columns.map(({ w }) => rcell(w, 'ratio_to_memory', 'p99_ratio_to_memory', false)).join(' | ')} |`,
    );
    for (const v of results.servers.filter((s) => s.variant)) {
      p(`| ${v.name} : best CoW anchor | ${columns.map(({ w }) => fmtRatio(ratios[w]?.variants[v.name])).join(' | ')} |`);
    }
    p();
    p(
      'Ratios: above 1 means nbd-cow is better in every column (throughput ÷ throughput; for latency the ' +
        "anchor's latency ÷ nbd-cow's). Best CoW anchor = the best of nbd-server, qemu-nbd and nbdkit-cow in that column " +
        '(named in brackets). Same-run ratios are what to compare; absolute numbers move between runs.',
    );
    p();

    if (settings.rounds > 1) {
      p(`### Rounds: each cell above is the median of ${settings.rounds} runs, the servers in turn`);
      p();
      p('The lowest and highest of each cell\'s runs (its headline number; "n of N" when some runs failed).');
      p();
      p(`| ${header.join(' | ')} |`);
      p(`|${header.map(() => '---').join('|')}|`);
      for (const s of results.servers) {
        p(`| ${s.name} | ${columns.map(({ w }) => roundsCell(s.workloads[w], settings.rounds)).join(' | ')} |`);
      }
      p();
    }

    p('### Server CPU seconds per workload (with reaped children)');
    p();
    const h2 = ['server', ...columns.map(({ w }) => w)];
    p(`| ${h2.join(' | ')} |`);
    p(`|${h2.map(() => '---').join('|')}|`);
    for (const s of results.servers) {
      p(`| ${s.name} | ${columns.map(({ w }) => cpuCell(s.workloads[w])).join(' | ')} |`);
    }
    p();

    const fioColumns = columns.filter(({ w }) => results.servers.some((s) => s.workloads[w]?.fio_cpu_s != null));
    if (fioColumns.length > 0) {
      p("### fio's CPU per workload: seconds (% of one core), all jobs, measured time only");
      p();
      const h3 = ['server', ...fioColumns.map(({ w }) => w)];
      p(`| ${h3.join(' | ')} |`);
      p(`|${h3.map(() => '---').join('|')}|`);
      for (const s of results.servers) {
        p(`| ${s.name} | ${fioColumns.map(({ w }) => fioCpuCell(s.workloads[w])).join(' | ')} |`);
      }
      p();
      p(
        "fio's usr_cpu + sys_cpu (with `--group_reporting`: of the jobs' summed runtime) × runtime; server CPU above also counts fio's ramp. " +
          'fio and the server share the host: a client near 100 % per core is a client-bound column.',
      );
      p();
    }
  }

  renderNoisy(results, p);

  renderScale(results, p);

  const problems: string[] = [];
  for (const s of results.servers) {
    for (const [w, r] of Object.entries(s.workloads))
      if (r.status !== 'ok' || r.note) problems.push(`- ${s.name} ${w}: ${r.status}${r.note ? ` — ${r.note}` : ''}`);
  }
  for (const m of results.messages) problems.push(`- ${m}`);
  if (problems.length) {
    p('### Failures and notes');
    p();
    out.push(...problems);
    p();
  }

  p('### Servers');
  p();
  for (const s of results.servers) p(`- **${s.name}**: \`${s.command ?? '(not started)'}\` — ${s.notes}`);
  p();
  return out.join('\n');
}

function roundsCell(r: WorkloadEntry | undefined, rounds: number): string {
  const values = r?.round_values;
  if (values === undefined || values.length === 0) return '–';
  const range = `${fmt(Math.min(...values))}–${fmt(Math.max(...values))}`;
  return values.length < rounds ? `${range} (${values.length} of ${rounds})` : range;
}

const cpuCell = (r: WorkloadEntry | undefined): string => (r?.status === 'ok' ? fmt(r.server_cpu_s) : '–');

const fioCpuCell = (r: WorkloadEntry | undefined): string =>
  r?.status === 'ok' && r.fio_cpu_s != null ? `${fmt(r.fio_cpu_s)} (${r.fio_cpu_pct ?? '–'} %)` : '–';

const latCell = (ph: NoisyPhase): string => `${fmt(ph.lat_mean_us)} / ${fmt(ph.lat_p99_us)}`;

function renderNoisy(results: Results, p: (s?: string) => void): void {
  const rows = results.servers.flatMap((s) => {
    const entries = Object.entries(s.workloads).filter(([w]) => w.split('@')[0] === 'noisy-neighbour');
    return entries.map(([w, r]) => ({ s, w, r }));
  });
  if (rows.length === 0) return;
  const any = rows.find(({ r }) => r.noisy)?.r.noisy;
  p('### Noisy neighbour: QD1 4 KiB reads of a warm region, alone and beside a cold reader');
  p();
  p(
    '| server | workload | alone mean / p99 µs | beside cold reader mean / p99 µs | mean × | p99 × | cold reader MiB/s (reads, mean µs) | base resident after drop | server CPU s |',
  );
  p('|---|---|---|---|---|---|---|---|---|');
  for (const { s, w, r } of rows) {
    const n = r.noisy;
    if (r.status !== 'ok' || !n) {
      p(`| ${s.name} | ${w} | ${r.status.toUpperCase()} | | | | | | |`);
      continue;
    }
    const x = (a: number | null, b: number | null): string => (a && b ? `${(b / a).toFixed(2)}×` : '–');
    const c = n.cold_reader;
    p(
      `| ${s.name === OURS ? `**${s.name}**` : s.name} | ${w} | ${latCell(n.alone)} | ${latCell(n.beside_cold)} | ` +
        `${x(n.alone.lat_mean_us, n.beside_cold.lat_mean_us)} | ${x(n.alone.lat_p99_us, n.beside_cold.lat_p99_us)} | ` +
        `${fmt(c.MiB_per_s)} (${c.reads}, ${fmt(c.lat_mean_us)})${c.wraps ? `, ${c.wraps} re-drop${c.wraps === 1 ? '' : 's'}` : ''} | ${fmtBytes(n.resident_after_drop_bytes)} | ${fmt(r.server_cpu_s)} |`,
    );
  }
  p();
  if (any) {
    p(
      `python3-libnbd clients (bench/noisy_neighbour.py): the first ${fmtBytes(any.warm_bytes)} of the ${fmtBytes(any.warm_bytes + any.cold_bytes)} base read ` +
        `once through the server, the rest dropped from the page cache (posix_fadvise DONTNEED); then ${any.seconds} s of QD1 4 KiB reads at random in the warm ` +
        `region alone, and ${any.seconds} s more while a second connection reads ${fmtBytes(any.cold_bs)} blocks of the cold part in a random order, ` +
        `${any.cold_qd} in flight (each block once; should it read them all, the cold part is dropped again: "re-drops"). ` +
        '× = beside ÷ alone. Latency is per blocking `pread`, Python included. nbdkit-memory serves no base: its "cold" reads come from RAM.',
    );
    p();
  }
}

function renderScale(results: Results, p: (s?: string) => void): void {
  const sc = results.scale;
  if (!sc) return;
  const variants = sc.variants ?? [];
  p(
    `### Scale: ${sc.connections} concurrent connections to ${variants.length > 0 ? 'nbd-cow and each variant' : 'one nbd-cow process'} (${sc.transport})`,
  );
  p();
  p(
    '| phase | open | errors / bad data | opened in s | written | RSS idle before | max RSS | RSS / conn | overlay dir du | overlay files | du after close | one session while idle | CPU s |',
  );
  p('|---|---|---|---|---|---|---|---|---|---|---|---|---|');
  const writersLabel = `writers (${sc.write_kib[0]}–${sc.write_kib[1]} KiB each, then idle)`;
  const readersLabel = 'readers (4 KiB read each, then idle)';
  const named = (server: string, label: string): string => (variants.length > 0 ? `${server}: ${label}` : label);
  const phases: [string, ScalePhase][] = [
    [named(OURS, writersLabel), sc.writers],
    [named(OURS, readersLabel), sc.readers],
    ...variants.flatMap((v): [string, ScalePhase][] => [
      [named(v.server, writersLabel), v.writers],
      [named(v.server, readersLabel), v.readers],
    ]),
  ];
  for (const [label, r] of phases) {
    if (r.status !== 'ok' || !('mode' in r)) {
      p(`| ${label} | ${r.status.toUpperCase()} | ${r.note ?? ''} | | | | | | | | | | |`);
      continue;
    }
    p(
      `| ${label} | ${r.open} | ${r.errors} / ${r.mismatches} | ${fmt(r.open_seconds)} | ${fmtBytes(r.bytes_written)} | ${fmtBytes((r.rss_before_kib ?? 0) * 1024)} | ` +
        `${fmtBytes(r.rss_max_kib * 1024)} | ${fmtBytes(r.rss_per_connection_bytes)} | ${fmtBytes(r.overlay.allocated_bytes)} | ${r.overlay.files} | ` +
        `${fmtBytes(r.overlay_after_close.allocated_bytes)} | ${r.probe_session_ms === null ? 'failed' : `${fmt(r.probe_session_ms)} ms`} | ${fmt(r.server_cpu_s)} |`,
    );
  }
  p();
  p(
    'max RSS = the largest VmRSS sampled every 100 ms from the first connection until all were closed; RSS / conn = (max RSS − RSS before) ÷ open connections. ' +
      'overlay dir du = `du -s -B1` of the overlay dir (minus the directory itself) while every connection is open; ' +
      'the read-only phase should leave it at 0. RSS and CPU are summed over the server process and its children (a variant with --workers: the primary and its workers).',
  );
  const writers = sc.writers;
  if (writers.status === 'ok' && 'mode' in writers && writers.open_fd_overlay) {
    p(
      `Files the server held open under the overlay dir (including unlinked ones) in the writers phase: ${writers.open_fd_overlay.files}, ${fmtBytes(writers.open_fd_overlay.bytes)} allocated.`,
    );
  }
  p();
}
