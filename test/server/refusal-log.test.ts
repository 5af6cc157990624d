// RefusalLog: the first refusal of an interval is logged at once with its peer, the rest are
// counted into one summary line when the interval ends (or at flush), never one line each.

import t from 'tap';
import { RefusalLog } from '../../lib/server/refusal-log.js';
import { waitFor } from '../helpers/wait.js';

function capture(intervalMs: number): { lines: string[]; log: RefusalLog } {
  const lines: string[] = [];
  return { lines, log: new RefusalLog({ write: (line) => lines.push(line), reason: 'too many connections', intervalMs }) };
}

t.test('a flood within one interval gives one line, then one summary at flush', async (t) => {
  const { lines, log } = capture(60_000);
  for (let i = 0; i < 10_000; i++) log.refused(`10.0.0.${i % 250}:${1000 + i}`);
  t.strictSame(lines, ['refused a connection from 10.0.0.0:1000: too many connections']);
  log.flush();
  t.strictSame(lines.slice(1), ['refused 9999 more connection(s), the latest from 10.0.0.249:10999: too many connections']);
  log.flush();
  t.equal(lines.length, 2, 'nothing more to flush');
});

t.test('the summary comes by itself when the interval ends', async (t) => {
  const { lines, log } = capture(20);
  t.teardown(() => log.flush());
  log.refused('a:1');
  log.refused('b:2');
  log.refused('c:3');
  t.equal(lines.length, 1, 'one line at once');
  await waitFor(() => lines.length === 2, 'the summary line');
  t.equal(lines[1], 'refused 2 more connection(s), the latest from c:3: too many connections');
});

t.test('after a quiet interval the next refusal is logged at once again', async (t) => {
  const { lines, log } = capture(20);
  t.teardown(() => log.flush());
  log.refused('a:1');
  // A 40 ms timer fires after the 20 ms one that ends the interval (timers run in expiry order);
  // with nothing counted, the interval ended without a summary.
  await new Promise((resolve) => setTimeout(resolve, 40));
  t.equal(lines.length, 1, 'no summary for an interval with one refusal');
  log.refused('b:2');
  t.strictSame(lines, [
    'refused a connection from a:1: too many connections',
    'refused a connection from b:2: too many connections',
  ]);
});

t.test('a single refusal gives a single line, with nothing to summarize', async (t) => {
  const { lines, log } = capture(60_000);
  log.refused('[::1]:5');
  log.flush();
  t.strictSame(lines, ['refused a connection from [::1]:5: too many connections']);
});
