// workers-status.ts: the primary's /metrics and /sessions over its workers, with stand-in
// workers that answer over a fake IPC channel (the real one is in test/e2e/workers.test.ts).

import type { ChildProcess } from 'node:child_process';
import { Counter, Registry } from 'prom-client';
import t from 'tap';
import { ServerMetrics } from '../../lib/server/metrics.js';
import type { SessionJson } from '../../lib/server/session-list.js';
import { type WorkerStatusReply, WorkersStatus } from '../../lib/server/workers-status.js';
import { parseExposition } from '../helpers/metrics-serve.js';

/** A stand-in worker: answers each 'status' question with its own counter and one session, or never. */
async function fakeWorker(pid: number, requests: number, answers: boolean, status: () => WorkersStatus): Promise<ChildProcess> {
  const registry = new Registry();
  const counter = new Counter({
    name: 'nbd_cow_requests_total',
    help: 'requests',
    labelNames: ['export'],
    registers: [registry],
  });
  counter.inc({ export: 'golden' }, requests);
  const metrics = await registry.getMetricsAsJSON();
  const session = { id: 1, peer: 'unix', export: 'golden', worker: pid } as unknown as SessionJson;
  return {
    connected: true,
    send: (message: { type: string; id: number }, _handle: unknown, _options: unknown, callback: (err: Error | null) => void) => {
      callback(null);
      if (answers)
        setImmediate(() => status().answer({ id: message.id, metrics, sessions: [session] } satisfies WorkerStatusReply));
      return true;
    },
  } as unknown as ChildProcess;
}

t.test('metrics are summed over the workers that answer; sessions are listed with their worker', async (t) => {
  let status: WorkersStatus | null = null;
  const get = (): WorkersStatus => status as WorkersStatus;
  const workers = [
    await fakeWorker(101, 3, true, get),
    await fakeWorker(102, 4, true, get),
    await fakeWorker(103, 100, false, get),
  ];
  status = new WorkersStatus(new ServerMetrics({ processMetrics: false }), () => workers, 200);
  const source = status.source();
  const { text, contentType } = await source.metrics();
  t.match(contentType, /text\/plain/);
  t.equal(parseExposition(text).get('nbd_cow_requests_total{export="golden"}'), 7, '3 + 4: the silent worker is left out');
  const sessions = await source.sessions();
  t.same(
    sessions.map((s) => s.worker),
    [101, 102],
  );
});

t.test('a worker that is not connected is not asked; a late answer is dropped', async (t) => {
  const status = new WorkersStatus(
    new ServerMetrics({ processMetrics: false }),
    () => [{ connected: false } as unknown as ChildProcess],
    50,
  );
  t.same(await status.source().sessions(), []);
  status.answer({ id: 999, metrics: [], sessions: [] });
  t.pass('an answer nobody waits for is ignored');
});
