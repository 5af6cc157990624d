// bench/lib/workloads.ts implausibleLatency: a fio run whose mean latency is longer than the run
// itself, or above its own largest latency, is not a measurement (the bench counts it failed);
// ordinary runs, and runs without latencies, pass.

import t from 'tap';
import { implausibleLatency } from '../../bench/lib/workloads.js';

t.test('ordinary runs pass', async (t) => {
  t.equal(implausibleLatency({ lat_mean_us: 51.8, lat_max_us: 2400, measured_s: 10 }), null);
  t.equal(implausibleLatency({ lat_mean_us: null, lat_max_us: null, measured_s: 0.6 }), null, 'no latency (an untimed write)');
  t.equal(implausibleLatency({ lat_mean_us: 900, lat_max_us: null, measured_s: 0 }), null, 'nothing to compare with');
});

t.test('a mean longer than the run, or above the largest latency, is refused', async (t) => {
  t.equal(
    implausibleLatency({ lat_mean_us: 74_088_286_916, lat_max_us: 80_000_000_000, measured_s: 10 }),
    'fio reported a mean latency of 74088286916 µs in a run of 10 s: not a measurement',
  );
  t.equal(
    implausibleLatency({ lat_mean_us: 500, lat_max_us: 400, measured_s: 10 }),
    'fio reported a mean latency of 500 µs above its largest, 400 µs',
  );
});
