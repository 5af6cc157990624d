// fio's nbd engine (one connection per job, kept for the verify phase): random writes with
// crc32c verification at 4 KiB / iodepth 32 and 64 KiB, plus verify_backlog interleaving reads
// with writes. fio exits 0 with no errors and reads back everything it wrote.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { requireClients } from '../helpers/clients.js';
import { waitForEmptyDir } from '../helpers/files.js';
import { describeRun, run } from '../helpers/processes.js';
import { servePatternBase } from '../helpers/server-process.js';

interface FioJob {
  jobname: string;
  error: number;
  total_err?: number;
  read: { io_bytes: number };
  write: { io_bytes: number };
}

const MiB = 1024 * 1024;

if (requireClients(t, ['fio'])) {
  t.test('fio verify runs', async (t) => {
    const { dir, overlays, guard, server } = await servePatternBase(t, 32 * MiB + 1536);

    const runs: Array<[string, string[]]> = [
      ['4k', ['--rw=randwrite', '--bs=4k', '--iodepth=32', '--size=16m', '--verify=crc32c']],
      ['64k', ['--rw=randwrite', '--bs=64k', '--iodepth=16', '--size=32m', '--verify=crc32c']],
      [
        'backlog',
        ['--rw=randwrite', '--bs=8k', '--iodepth=8', '--size=8m', '--offset=4m', '--verify=crc32c', '--verify_backlog=64'],
      ],
    ];
    for (const [name, args] of runs) {
      const out = join(dir, `fio-${name}.json`);
      const r = await run(
        'fio',
        [
          `--name=${name}`,
          '--ioengine=nbd',
          `--uri=${server.uri}`,
          ...args,
          '--verify_fatal=1',
          '--verify_state_save=0',
          '--output-format=json',
          `--output=${out}`,
        ],
        { timeoutMs: 90_000, cwd: dir },
      );
      t.equal(r.code, 0, `fio ${name}: ${describeRun(r)}`);
      t.notMatch(r.stdout + r.stderr, /verify: bad|bad magic|crc32c: wanted/i, `fio ${name}: no verify errors`);
      const job = (JSON.parse(readFileSync(out, 'utf8')) as { jobs: FioJob[] }).jobs[0];
      t.ok(job, `fio ${name} reported its job`);
      if (job === undefined) continue;
      t.equal(job.error, 0, `fio ${name}: job error 0`);
      t.equal(job.total_err ?? 0, 0, `fio ${name}: no I/O errors`);
      t.ok(job.write.io_bytes > 0, `fio ${name} wrote`);
      t.equal(job.read.io_bytes, job.write.io_bytes, `fio ${name} verified everything it wrote`);
    }
    t.same(await waitForEmptyDir(overlays), [], 'overlays deleted after fio disconnected');

    t.equal((await server.stop()).code, 0);
    await guard.check();
  });
}
