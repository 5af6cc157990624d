// The /metrics exposition of a server that has served both exports, through `promtool check
// metrics` (Prometheus's own parser and linter): our metrics pass clean; of prom-client's
// default metrics, only its three `_total` gauges draw the linter's known naming remark.

import { join } from 'node:path';
import t from 'tap';
import { makePatternBase } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { scrape, startMetricsServe } from '../helpers/metrics-serve.js';
import { run } from '../helpers/processes.js';
import { pySession } from '../helpers/py-session.js';

/** prom-client's gauges nodejs_active_{handles,requests,resources}_total: a name promtool lints. */
const PROM_CLIENT_TOTAL_GAUGES =
  /^nbd_cow_nodejs_active_(handles|requests|resources)_total non-counter metrics should not have "_total" suffix$/;

if (requireClients(t, ['promtool'], true)) {
  t.test('promtool parses the exposition; our metrics lint clean', async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, 4 * 1024 * 1024, 'golden.img');
    const server = await startMetricsServe(t, base, ['--overlay-dir', join(dir, 'overlays')]);
    const py = pySession(t);
    await py.ok({ op: 'connect', h: 'g', uri: server.uri });
    await py.ok({ op: 'connect', h: 'a', uri: `${server.uri}@alice` });
    await py.ok({ op: 'pwrite', h: 'g', offset: 100, data: Buffer.alloc(10, 1).toString('base64') });
    await py.ok({ op: 'pread', h: 'a', offset: 0, length: 4096 });
    await py.ok({ op: 'trim', h: 'a', offset: 0, length: 8192 });
    const { text } = await scrape(server.metricsUri);

    const all = await run('promtool', ['check', 'metrics'], { input: text });
    // promtool: exit 1 for what it cannot parse, 3 for lint remarks.
    t.ok(all.code === 0 || all.code === 3, `promtool parsed it (exit ${all.code}): ${all.stderr}${all.stdout}`);
    const remarks = `${all.stdout}${all.stderr}`.split('\n').filter((l) => l.trim() !== '');
    t.strictSame(
      remarks.filter((l) => !PROM_CLIENT_TOTAL_GAUGES.test(l)),
      [],
      "no remark but prom-client's known one",
    );

    const ours = text
      .split('\n')
      .filter((l) => !/^(# (HELP|TYPE) )?nbd_cow_(nodejs|process)_/.test(l))
      .join('\n');
    t.match(ours, 'nbd_cow_requests_total{export="golden",command="trim",result="ok"} 1', 'traffic in it');
    const lint = await run('promtool', ['check', 'metrics'], { input: ours });
    t.equal(lint.code, 0, `our metrics: ${lint.stdout}${lint.stderr}`);
    t.equal(`${lint.stdout}${lint.stderr}`.trim(), '', 'no remark');
  });
}
