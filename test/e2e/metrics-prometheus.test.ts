// A real Prometheus (Debian's `prometheus` server) on loopback, with its own data directory and a
// 1 s scrape interval, scrapes `serve --config` with `metrics:`; its query API then shows the
// requests of the exports `golden` and `silver` (through its named overlay silver@alice) per
// export, as the test sent them. Stopped by its pid.

import { type ChildProcess, spawn } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { makePatternBase, makeStripedBase } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { startMetricsServeConfig } from '../helpers/metrics-serve.js';
import { freePort, pidOf } from '../helpers/processes.js';
import { pySession } from '../helpers/py-session.js';
import { within } from '../helpers/wait.js';

interface QueryResult {
  readonly metric: Record<string, string>;
  readonly value: [number, string];
}

/** GET a Prometheus API URL as JSON, or null while it does not answer. */
async function getJson(url: string): Promise<unknown> {
  try {
    const response = await fetch(url, { signal: AbortSignal.timeout(2000) });
    return response.ok ? await response.json() : null;
  } catch {
    return null;
  }
}

/** Start prometheus on a free loopback port scraping `target` (host:port); retried if the port was taken meanwhile. */
async function startPrometheus(t: Test, target: string): Promise<{ api: string; log: () => string }> {
  const dir = t.testdir();
  const config = join(dir, 'prometheus.yml');
  writeFileSync(
    config,
    `global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: nbd-cow\n    static_configs:\n      - targets: ['${target}']\n`,
  );
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const child: ChildProcess = spawn(
      'prometheus',
      [
        `--config.file=${config}`,
        `--storage.tsdb.path=${join(dir, `data-${attempt}`)}`,
        `--web.listen-address=127.0.0.1:${port}`,
      ],
      { stdio: ['ignore', 'ignore', 'pipe'] },
    );
    let log = '';
    child.stderr?.setEncoding('utf8').on('data', (s: string) => (log += s));
    const exited = new Promise<void>((resolve) => child.on('exit', () => resolve()));
    t.teardown(async () => {
      if (child.exitCode !== null || child.signalCode !== null) return;
      process.kill(pidOf(child), 'SIGTERM');
      await within(exited, 20_000, 'prometheus to stop').catch(() => child.kill('SIGKILL'));
    });
    const api = `http://127.0.0.1:${port}`;
    const deadline = Date.now() + 15_000;
    while (child.exitCode === null && Date.now() < deadline) {
      if ((await fetch(`${api}/-/ready`).catch(() => null))?.ok === true) return { api, log: () => log };
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    if (child.exitCode === null || attempt === 3) throw new Error(`prometheus did not become ready: ${log}`);
  }
}

/** Poll the instant query until `done` holds (Prometheus scrapes every second); its last result. */
async function queryUntil(api: string, query: string, done: (r: QueryResult[]) => boolean): Promise<QueryResult[]> {
  const url = `${api}/api/v1/query?query=${encodeURIComponent(query)}`;
  const deadline = Date.now() + 20_000;
  let result: QueryResult[] = [];
  do {
    const body = (await getJson(url)) as { data?: { result?: QueryResult[] } } | null;
    result = body?.data?.result ?? [];
    if (done(result)) return result;
    await new Promise((resolve) => setTimeout(resolve, 250));
  } while (Date.now() < deadline);
  return result;
}

const byLabel = (result: QueryResult[], label: string): Record<string, number> =>
  Object.fromEntries(result.map((r) => [r.metric[label] ?? '?', Number(r.value[1])]));

const sameCounts = (a: Record<string, number>, b: Record<string, number>): boolean =>
  JSON.stringify(Object.entries(a).sort()) === JSON.stringify(Object.entries(b).sort());

if (requireClients(t, ['prometheus'], true)) {
  t.test("Prometheus scrapes the server and its query API shows each export's requests", async (t) => {
    const dir = t.testdir();
    await makePatternBase(dir, 4 * 1024 * 1024, 'golden.img');
    await makeStripedBase(dir, 4 * 1024 * 1024, 'silver.img');
    const config = join(dir, 'lab.yaml');
    writeFileSync(
      config,
      [
        'listen:',
        '  - tcp: 127.0.0.1:0',
        'metrics: 127.0.0.1:0',
        'exports:',
        '  golden:',
        '    base: golden.img',
        '    overlay-dir: overlays',
        '  silver:',
        '    base: silver.img',
        '    overlay-dir: overlays',
        '',
      ].join('\n'),
    );
    const server = await startMetricsServeConfig(t, config);
    const root = server.uri.replace(/golden$/, '');
    const py = pySession(t);
    await py.ok({ op: 'connect', h: 'g', uri: `${root}golden` });
    await py.ok({ op: 'connect', h: 's', uri: `${root}silver@alice` });
    for (let i = 0; i < 5; i++) await py.ok({ op: 'pread', h: 'g', offset: i * 4096, length: 4096 });
    await py.ok({ op: 'pwrite', h: 'g', offset: 0, data: Buffer.alloc(4096, 1).toString('base64') });
    await py.ok({ op: 'pwrite', h: 's', offset: 0, data: Buffer.alloc(8192, 2).toString('base64') });
    await py.ok({ op: 'flush', h: 's' });

    const prometheus = await startPrometheus(t, new URL(server.metricsUri).host);
    const expected = { golden: 6, silver: 2 };
    const query = 'sum by (export) (nbd_cow_requests_total)';
    const requests = await queryUntil(prometheus.api, query, (r) => sameCounts(byLabel(r, 'export'), expected));
    if (!sameCounts(byLabel(requests, 'export'), expected)) t.comment(`prometheus log: ${prometheus.log()}`);
    t.strictSame(byLabel(requests, 'export'), expected, query);
    t.comment(`${query}: ${JSON.stringify(requests)}`);
    const written = await queryUntil(prometheus.api, 'nbd_cow_written_bytes_total', (r) => r.length === 2);
    t.strictSame(byLabel(written, 'export'), { golden: 4096, silver: 8192 }, 'nbd_cow_written_bytes_total');
    const up = await queryUntil(prometheus.api, 'up{job="nbd-cow"}', (r) => r.length === 1);
    t.equal(up[0]?.value[1], '1', 'the target is up');
  });
}
