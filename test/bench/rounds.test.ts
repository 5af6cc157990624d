import t from 'tap';
import type { WorkloadEntry } from '../../bench/lib/results.js';
import { medianRound } from '../../bench/lib/rounds.js';

const iops = (value: number, extra: Partial<WorkloadEntry> = {}): WorkloadEntry => ({ status: 'ok', iops: value, ...extra });

t.test('one round is reported as it is', async (t) => {
  const only = iops(5, { server_cpu_s: 1 });
  t.equal(medianRound('rand-read', [only]), only);
});

t.test('the median round by the headline, the whole entry of that round, every value kept', async (t) => {
  const rounds = [iops(300, { server_cpu_s: 3 }), iops(100, { server_cpu_s: 1 }), iops(200, { server_cpu_s: 2 })];
  const m = medianRound('rand-read', rounds);
  t.equal(m.iops, 200);
  t.equal(m.server_cpu_s, 2, "the median round's own CPU, not a mix of rounds");
  t.same(m.round_values, [300, 100, 200], 'in the order they ran');
});

t.test('latency: lower is better; of an even count, the worse middle', async (t) => {
  const lat = (v: number): WorkloadEntry => ({ status: 'ok', lat_mean_us: v, lat_p99_us: v * 2 });
  t.equal(medianRound('rand-read-qd1', [lat(50), lat(40), lat(60)]).lat_mean_us, 50);
  t.equal(medianRound('rand-read-qd1', [lat(50), lat(40), lat(60), lat(45)]).lat_mean_us, 50);
  t.equal(medianRound('rand-read', [iops(1), iops(4), iops(2), iops(3)]).iops, 2, 'throughput: the lower middle');
  t.equal(medianRound('sessions@unix', [{ status: 'ok', sessions_per_s: 7 }]).sessions_per_s, 7);
});

t.test('failed rounds are left out and counted in the note; all failed: the last, said so', async (t) => {
  const failed: WorkloadEntry = { status: 'fail', note: 'fio exited with 1' };
  const m = medianRound('seq-read', [{ status: 'ok', MiB_per_s: 10 }, failed, { status: 'ok', MiB_per_s: 30 }]);
  t.equal(m.status, 'ok');
  t.equal(m.MiB_per_s, 10);
  t.same(m.round_values, [10, 30]);
  t.match(m.note, /1 of 3 rounds failed/);
  const none = medianRound('seq-read', [failed, { status: 'fail', note: 'server did not start' }]);
  t.equal(none.status, 'fail');
  t.match(none.note, /server did not start; all 2 rounds failed/);
});

t.test('a workload without a headline number (noisy-neighbour) keeps its first ok round', async (t) => {
  const first: WorkloadEntry = { status: 'ok', note: 'first' };
  t.equal(medianRound('noisy-neighbour', [{ status: 'fail' }, first, { status: 'ok', note: 'second' }]), first);
});
