// Markdown report and ratio computation from the results object that bench.mjs builds.

export const OURS = 'nbd-cow';
export const MEMORY = 'nbdkit-memory';

/** Headline metric of a workload (name without @transport). */
function headline(workload) {
  const base = workload.split('@')[0];
  switch (base) {
    case 'seq-read':
    case 'seq-write':
      return { key: 'MiB_per_s', label: 'MiB/s', lowerBetter: false };
    case 'rand-read':
    case 'rand-write':
      return { key: 'iops', label: 'IOPS', lowerBetter: false };
    case 'rand-read-qd1':
      return { key: 'lat_mean_us', key2: 'lat_p99_us', label: 'mean / p99 µs', lowerBetter: true };
    case 'sessions':
      return { key: 'sessions_per_s', label: 'sessions/s', lowerBetter: false };
    default:
      return null;
  }
}

function columnLabel(workload, defaultTransport) {
  const [base, transport = defaultTransport] = workload.split('@');
  const h = headline(workload);
  const name = base === 'rand-read-qd1' ? 'rand-read QD1' : base;
  const t = base === 'sessions' || transport !== defaultTransport ? ` (${transport})` : '';
  return base === 'sessions' ? `${h.label}${t}` : `${name}${t} ${h.label}`;
}

/** "Speed" ratio ours : other, > 1 means nbd-cow is better (latency: other ÷ ours). */
function speedRatio(ours, other, lowerBetter) {
  if (ours == null || other == null || ours === 0 || other === 0) return null;
  return Math.round((lowerBetter ? other / ours : ours / other) * 1000) / 1000;
}

/** Per workload: nbd-cow against the best copy-on-write anchor and against nbdkit-memory. */
export function computeRatios(results, workloads) {
  const byName = Object.fromEntries(results.servers.map((s) => [s.name, s]));
  const ours = byName[OURS];
  const out = {};
  for (const w of workloads) {
    const h = headline(w);
    if (!h) continue;
    const ok = (s) => s?.workloads[w]?.status === 'ok' && s.workloads[w][h.key] != null;
    const entry = { metric: h.key, lower_is_better: h.lowerBetter, ours: ok(ours) ? ours.workloads[w][h.key] : null };
    let best = null;
    for (const s of results.servers) {
      if (s.name === OURS || !s.cow || !ok(s)) continue;
      const v = s.workloads[w][h.key];
      if (best === null || (h.lowerBetter ? v < best.value : v > best.value)) best = { name: s.name, value: v };
    }
    entry.best_cow_anchor = best?.name ?? null;
    entry.best_cow_value = best?.value ?? null;
    entry.ratio_to_best_cow = speedRatio(entry.ours, best?.value, h.lowerBetter);
    // nbd-cow variants (OURS_VARIANTS), each against the same best anchor.
    entry.variants = {};
    for (const s of results.servers) {
      if (s.variant) entry.variants[s.name] = speedRatio(ok(s) ? s.workloads[w][h.key] : null, best?.value, h.lowerBetter);
    }
    const mem = byName[MEMORY];
    entry.memory_value = ok(mem) ? mem.workloads[w][h.key] : null;
    entry.ratio_to_memory = speedRatio(entry.ours, entry.memory_value, h.lowerBetter);
    if (h.key2) {
      const o2 = ok(ours) ? ours.workloads[w][h.key2] : null;
      const b2 = best ? byName[best.name].workloads[w][h.key2] : null;
      entry.p99_ratio_to_best_cow = speedRatio(o2, b2, true);
      entry.p99_ratio_to_memory = speedRatio(o2, ok(mem) ? mem.workloads[w][h.key2] : null, true);
    }
    out[w] = entry;
  }
  return out;
}

function fmt(x) {
  if (x === null || x === undefined) return '–';
  const a = Math.abs(x);
  const digits = a >= 100 ? 0 : a >= 10 ? 1 : 2;
  return x.toLocaleString('en-US', { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

const fmtRatio = (r) => (r === null || r === undefined ? '–' : `${r.toFixed(2)}×`);

function fmtBytes(b) {
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

function cell(r, w) {
  if (!r) return '';
  if (r.status !== 'ok') return r.status.toUpperCase();
  const h = headline(w);
  let s = fmt(r[h.key]);
  if (h.key2) s += ` / ${fmt(r[h.key2])}`;
  if (r.sessions !== undefined && (r.errors > 0 || r.mismatches > 0)) s += ` (${r.errors} err, ${r.mismatches} bad)`;
  return s;
}

export function renderMarkdown(results) {
  const { settings } = results;
  const workloads = settings.workloads.filter((w) => headline(w));
  const out = [];
  const p = (s = '') => out.push(s);
  p('## nbd-cow benchmark');
  p();
  p(`- date (UTC): ${results.generated}`);
  p(
    `- host: ${results.host.cpus} CPUs, ${results.host.mem_gib} GiB RAM, kernel ${results.host.kernel}; load average at start ${results.host.loadavg_start}`,
  );
  p(
    `- settings: BASE_MB=${settings.base_mb} RUNTIME=${settings.runtime} RAMP=${settings.ramp} SESSION_SECONDS=${settings.session_seconds} ` +
      `SCALE_CONNECTIONS=${settings.scale_connections}${settings.quick ? ' (BENCH_QUICK=1)' : ''}${settings.ours_args.length ? ` OURS_ARGS="${settings.ours_args.join(' ')}"` : ''}`,
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

  if (workloads.length > 0) {
    p('### One client, fresh server and empty overlay per workload');
    p();
    const header = ['server', ...workloads.map((w) => columnLabel(w, settings.transport))];
    p(`| ${header.join(' | ')} |`);
    p(`|${header.map(() => '---').join('|')}|`);
    for (const s of results.servers) {
      p(`| ${s.name === OURS ? `**${s.name}**` : s.name} | ${workloads.map((w) => cell(s.workloads[w], w)).join(' | ')} |`);
    }
    const ratios = results.ratios;
    const rcell = (w, key, key2, nameKey) => {
      const r = ratios[w];
      if (!r) return '–';
      let s = fmtRatio(r[key]);
      if (key2 && r[key2] !== undefined) s += ` / ${fmtRatio(r[key2])}`;
      if (nameKey && r[nameKey]) s += ` (${r[nameKey]})`;
      return s;
    };
    p(
      `| nbd-cow : best CoW anchor | ${workloads.map((w) => rcell(w, 'ratio_to_best_cow', 'p99_ratio_to_best_cow', 'best_cow_anchor')).join(' | ')} |`,
    );
    p(
      `| nbd-cow : nbdkit-memory | ${workloads.map((w) => rcell(w, 'ratio_to_memory', 'p99_ratio_to_memory', null)).join(' | ')} |`,
    );
    for (const v of results.servers.filter((s) => s.variant)) {
      p(`| ${v.name} : best CoW anchor | ${workloads.map((w) => fmtRatio(ratios[w]?.variants?.[v.name])).join(' | ')} |`);
    }
    p();
    p(
      'Ratios: above 1 means nbd-cow is better in every column (throughput ÷ throughput; for latency the ' +
        "anchor's latency ÷ nbd-cow's). Best CoW anchor = the best of nbd-server, qemu-nbd and nbdkit-cow in that column " +
        '(named in brackets). Same-run ratios are what to compare; absolute numbers move between runs.',
    );
    p();

    p('### Server CPU seconds per workload (with reaped children)');
    p();
    const h2 = ['server', ...workloads];
    p(`| ${h2.join(' | ')} |`);
    p(`|${h2.map(() => '---').join('|')}|`);
    for (const s of results.servers) {
      p(
        `| ${s.name} | ${workloads.map((w) => (s.workloads[w]?.status === 'ok' ? fmt(s.workloads[w].server_cpu_s) : '–')).join(' | ')} |`,
      );
    }
    p();
  }

  const sc = results.scale;
  if (sc) {
    p(`### Scale: ${sc.connections} concurrent connections to one nbd-cow process (${sc.transport})`);
    p();
    p(
      '| phase | open | errors / bad data | opened in s | written | RSS idle before | max RSS | RSS / conn | overlay dir du | overlay files | du after close | one session while idle | CPU s |',
    );
    p('|---|---|---|---|---|---|---|---|---|---|---|---|---|');
    for (const [label, r] of [
      [`writers (${sc.write_kib[0]}–${sc.write_kib[1]} KiB each, then idle)`, sc.writers],
      ['readers (4 KiB read each, then idle)', sc.readers],
    ]) {
      if (!r) continue;
      if (r.status !== 'ok') {
        p(`| ${label} | ${r.status.toUpperCase()} | ${r.note ?? ''} | | | | | | | | | | |`);
        continue;
      }
      p(
        `| ${label} | ${r.open} | ${r.errors} / ${r.mismatches} | ${fmt(r.open_seconds)} | ${fmtBytes(r.bytes_written)} | ${fmtBytes(r.rss_before_kib * 1024)} | ` +
          `${fmtBytes(r.rss_max_kib * 1024)} | ${fmtBytes(r.rss_per_connection_bytes)} | ${fmtBytes(r.overlay.allocated_bytes)} | ${r.overlay.files} | ` +
          `${fmtBytes(r.overlay_after_close.allocated_bytes)} | ${r.probe_session_ms === null ? 'failed' : `${fmt(r.probe_session_ms)} ms`} | ${fmt(r.server_cpu_s)} |`,
      );
    }
    p();
    p(
      'max RSS = the largest VmRSS sampled every 100 ms from the first connection until all were closed; RSS / conn = (max RSS − RSS before) ÷ open connections. ' +
        'overlay dir du = `du -s -B1` of the overlay dir (minus the directory itself) while every connection is open; ' +
        'the read-only phase should leave it at 0.',
    );
    if (sc.writers?.status === 'ok' && sc.writers.open_fd_overlay) {
      p(
        `Files the server held open under the overlay dir (including unlinked ones) in the writers phase: ${sc.writers.open_fd_overlay.files}, ${fmtBytes(sc.writers.open_fd_overlay.bytes)} allocated.`,
      );
    }
    p();
  }

  const problems = [];
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
