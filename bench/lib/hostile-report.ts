// The results of bench/hostile.ts: one record per case (the shape of hostile-latest.json) and
// the Markdown table printed from them.

import type { HostileKind } from './hostile-clients.js';
import type { ProbeResult } from './nbdinfo-probe.js';
import type { NormalService } from './normal-reader.js';
import type { DropSummary, LimitReason, Sample } from './server-watch.js';

export interface OpenSummary {
  readonly opened: number;
  readonly errors: number;
  readonly first_error: string | null;
}

export interface ServerSummary {
  /** Still running at the end of the case, and not stopped early by the harness. */
  readonly survived: boolean;
  readonly stopped_early: LimitReason | null;
  /** Seconds into the case when it was stopped early. */
  readonly stopped_at_s: number | null;
  readonly rss_start_kib: number | null;
  /** Largest VmRSS sampled every 100 ms. */
  readonly rss_max_sampled_kib: number;
  /** VmHWM at the end (the kernel's peak, between samples too); null if it died. */
  readonly vm_hwm_kib: number | null;
  readonly rss_end_kib: number | null;
  readonly sockets_start: number | null;
  readonly sockets_max: number | null;
  readonly sockets_end: number | null;
  /** Lines of its log that say a connection was dropped or closed for a limit. */
  readonly log_drop_lines: number;
  readonly log_tail: string;
}

export interface CaseResult {
  readonly name: string;
  readonly hostile: readonly HostileKind[];
  readonly status: 'ok' | 'stopped' | 'failed';
  readonly note: string | null;
  readonly seconds: number | null;
  readonly server: ServerSummary | null;
  readonly open: Partial<Record<HostileKind, OpenSummary>>;
  readonly dropped: Partial<Record<HostileKind, DropSummary>>;
  readonly normal: NormalService | null;
  readonly nbdinfo: ProbeResult | null;
  /** [t_s, VmRSS KiB, VmHWM KiB, sockets] every 100 ms. */
  readonly timeline: readonly Sample[];
}

const SHORT: Readonly<Record<HostileKind, string>> = {
  'stalled-handshake': 'stalled',
  'half-option': 'half-option',
  'non-reader': 'non-reader',
};

export function mib(kib: number | null | undefined): string {
  return kib === null || kib === undefined ? '–' : `${(kib / 1024).toFixed(kib >= 10 * 1024 * 1024 ? 0 : 1)} MiB`;
}

const num = (x: number | null | undefined, digits = 1): string => (x === null || x === undefined ? '–' : x.toFixed(digits));

function dropCell(r: CaseResult): string {
  const parts = r.hostile.map((kind) => {
    const d = r.dropped[kind];
    if (d === undefined) return `${SHORT[kind]}: –`;
    const when = d.dropped > 0 ? ` at ${num(d.first_drop_s)}–${num(d.last_drop_s)} s` : '';
    return `${r.hostile.length > 1 ? `${SHORT[kind]} ` : ''}${d.dropped}/${d.opened}${when}`;
  });
  return parts.length === 0 ? '–' : parts.join('; ');
}

function serverCell(r: CaseResult): string {
  const s = r.server;
  if (s === null) return 'did not start';
  if (s.stopped_early === 'rss-cap') return `killed by us at ${num(s.stopped_at_s)} s (RSS cap)`;
  if (s.stopped_early === 'died') return `**died** at ${num(s.stopped_at_s)} s`;
  return s.survived ? 'alive' : 'gone';
}

function serviceCell(r: CaseResult): string {
  const n = r.normal;
  if (n === null) return '– | – | –';
  const rate = `${num(n.reads_per_s, (n.reads_per_s ?? 0) < 10 ? 1 : 0)}${n.errors > 0 ? ` (${n.errors} err)` : ''}${n.mismatches > 0 ? ` **${n.mismatches} bad**` : ''}`;
  const gap = `${num((n.longest_gap_ms ?? 0) / 1000, 1)} s${n.unfinished_at_end ? ' (unfinished)' : ''}`;
  return `${rate} | ${num(n.lat_p50_ms, 2)} / ${num(n.lat_p99_ms, 2)} | ${gap}`;
}

/** The table: case × memory, the normal client's service, nbdinfo, drops, the server's fate. */
export function renderTable(cases: readonly CaseResult[]): string {
  const lines = [
    '| case | RSS max (VmHWM) | RSS at end | normal reads/s | p50 / p99 ms | longest wait | nbdinfo ok/total | hostile dropped (when) | server |',
    '|---|---|---|---|---|---|---|---|---|',
  ];
  for (const r of cases) {
    const s = r.server;
    const hwm = s === null ? '–' : mib(Math.max(s.vm_hwm_kib ?? 0, s.rss_max_sampled_kib));
    const info = r.nbdinfo === null ? '–' : `${r.nbdinfo.ok}/${r.nbdinfo.total}`;
    lines.push(
      `| ${r.name} | ${hwm} | ${mib(s?.rss_end_kib)} | ${serviceCell(r)} | ${info} | ${dropCell(r)} | ${serverCell(r)} |`,
    );
  }
  return lines.join('\n');
}
