// Crash safety of a named overlay: a python3-libnbd client (test/helpers/crash_client.py) does
// random writes, FUA writes, zeroes, trims and flushes; the server is killed with SIGKILL after
// a random number of acknowledged operations (so the next one is in flight: a write, a flush,
// the first write that creates the file...). Then: `overlay check` reports "not closed
// cleanly" and a consistent map; a new server serves the overlay and every block holds a value
// it had since its last flush (flushed and FUA data exact, nothing torn at block granularity);
// a clean stop leaves it clean; the base never changes. Several seeds, bounded operations.

import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import t from 'tap';
import { seededRandom } from '../block/helpers.js';
import { guardBase, makeRandomBase } from '../helpers/bases.js';
import { pythonWithNbd, requireClients } from '../helpers/clients.js';
import { describeRun, run } from '../helpers/processes.js';
import { HELPERS } from '../helpers/py-session.js';
import { runCli, startServe } from '../helpers/server-process.js';

const SIZE = 4 * 1024 * 1024;
const OPS = 800;
// killAfter: acknowledged operations before the kill; 1 catches the overlay's creation, the
// others land anywhere (the operation in flight is whatever the seed made next).
const CASES = [
  { seed: 1, blockSize: 4096, killAfter: 1 },
  { seed: 2, blockSize: 4096, killAfter: 9 },
  { seed: 3, blockSize: 4096, killAfter: 0 },
  { seed: 4, blockSize: 512, killAfter: 0 },
  { seed: 5, blockSize: 4096, killAfter: 0 },
  { seed: 6, blockSize: 4096, killAfter: 0 },
];

/** Run the writer; SIGKILL the server once `killAfter` acks were seen. Returns the last ack. */
async function writeUntilKilled(
  uri: string,
  seed: number,
  blockSize: number,
  killAfter: number,
  serverPid: number,
): Promise<number> {
  const python = pythonWithNbd() as string;
  const child = spawn(
    python,
    [join(HELPERS, 'crash_client.py'), 'write', uri, String(seed), String(SIZE), String(blockSize), String(OPS)],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  const safety = setTimeout(() => child.kill('SIGKILL'), 120_000);
  let acked = -1;
  let killed = false;
  createInterface({ input: child.stdout }).on('line', (line) => {
    const m = /^ack (\d+)$/.exec(line);
    if (m === null) return;
    acked = Math.max(acked, Number(m[1]));
    if (!killed && acked + 1 >= killAfter) {
      killed = true;
      process.kill(serverPid, 'SIGKILL');
    }
  });
  await new Promise((resolve) => child.on('close', resolve));
  clearTimeout(safety);
  if (!killed) process.kill(serverPid, 'SIGKILL');
  return acked;
}

if (requireClients(t, [], true)) {
  for (const { seed, blockSize, killAfter: fixed } of CASES) {
    t.test(`seed ${seed} bs ${blockSize}`, async (t) => {
      const dir = t.testdir();
      const overlays = join(dir, 'overlays');
      const base = await makeRandomBase(dir, SIZE, 'golden.img');
      const guard = await guardBase(t, base);
      const file = join(overlays, 'named-golden@crash.cow');
      const rand = seededRandom(seed * 7919);
      rand();
      const killAfter = fixed > 0 ? fixed : 2 + Math.floor(rand() * (OPS - 20));
      const args = ['--overlay-dir', overlays, '--block-size', String(blockSize), '-q'];

      const first = await startServe(t, base, args);
      const acked = await writeUntilKilled(`${first.uri}@crash`, seed, blockSize, killAfter, first.pid);
      t.equal((await first.exited).signal, 'SIGKILL', `server killed after ${acked + 1} acknowledged operations`);

      if (existsSync(file)) {
        const check = await runCli(['overlay', 'check', file, '--base', base]);
        t.ok(check.code === 2 || check.code === 0, `check after the kill: ${describeRun(check)}\n${check.stdout}`);
        t.match(check.stdout, /map: ok/, 'the map is consistent');
      }

      const second = await startServe(t, base, args);
      const python = pythonWithNbd() as string;
      const verify = await run(python, [
        join(HELPERS, 'crash_client.py'),
        'verify',
        `${second.uri}@crash`,
        String(seed),
        String(SIZE),
        String(blockSize),
        String(acked),
      ]);
      t.equal(
        verify.code,
        0,
        `every block holds a value it had since its last flush: ${verify.stdout.trim()} ${describeRun(verify)}`,
      );
      t.equal((await second.stop()).code, 0, 'clean stop');

      if (existsSync(file)) {
        const check = await runCli(['overlay', 'check', file, '--base', base]);
        t.equal(check.code, 0, `clean after an orderly stop: ${check.stdout}`);
      }
      await guard.check();
    });
  }
}
