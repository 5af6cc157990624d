// The default text log of real client sessions: one `nbd-cow: conn N (PEER): …` line when a
// client connects, one naming the export it chose and what it negotiated, and one when it goes,
// with its requests, bytes read and written, overlay bytes and duration. No debug lines without -v.

import { join } from 'node:path';
import t from 'tap';
import { makePatternBase } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { describeRun, run } from '../helpers/processes.js';
import { startServe } from '../helpers/server-process.js';
import { waitFor } from '../helpers/wait.js';

const SIZE = 8 * 1024 * 1024;

/** The lines of `log` about connection `conn`. */
function linesOf(log: string, conn: number): string[] {
  return log.split('\n').filter((l) => l.startsWith(`nbd-cow: conn ${conn} (`));
}

if (requireClients(t, ['qemu-io', 'nbdinfo'])) {
  t.test('qemu-io, nbdinfo --size and nbdinfo --list: connect, export and disconnect lines with their counts', async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, SIZE, 'golden.img');
    const server = await startServe(t, base, ['--overlay-dir', join(dir, 'overlays')]);

    // Connection 1: 64 KiB aligned plus 100 bytes inside block 17 (one 4 KiB block copied up), 4 KiB read.
    const io = await run('qemu-io', [
      '-f',
      'raw',
      '-c',
      'write -P 0xab 0 64k',
      '-c',
      'write -P 0xcd 70000 100',
      '-c',
      'read -P 0xab 0 4k',
      server.uri,
    ]);
    t.equal(io.code, 0, describeRun(io));
    await waitFor(() => /conn 1 .*disconnected/.test(server.stderr()), 'the first disconnect line');
    const size = await run('nbdinfo', ['--size', server.uri]);
    t.equal(size.stdout.trim(), String(SIZE), describeRun(size));
    await waitFor(() => /conn 2 .*disconnected/.test(server.stderr()), 'the second disconnect line');
    const list = await run('nbdinfo', ['--list', server.uri]);
    t.equal(list.code, 0, describeRun(list));
    await waitFor(() => /conn 3 .*disconnected/.test(server.stderr()), 'the third disconnect line');

    const log = server.stderr();
    const [connected, chosen, gone, ...more] = linesOf(log, 1);
    t.strictSame(more, [], 'three lines for the qemu-io connection');
    t.match(connected, /^nbd-cow: conn 1 \(127\.0\.0\.1:\d+\): connected$/);
    t.match(
      chosen,
      /^nbd-cow: conn 1 \(127\.0\.0\.1:\d+\): export "golden" \(throwaway overlay\); structured replies, meta contexts base:allocation; no TLS$/,
    );
    const totals =
      /: disconnected \(client sent NBD_CMD_DISC\): export "golden", (\d+) requests, 4096 bytes read, 65636 bytes written, 69632 bytes in the overlay, \d+\.\d{3} s$/.exec(
        gone ?? '',
      );
    t.ok(totals, `the totals: ${gone}`);
    t.ok(Number(totals?.[1]) >= 3, `at least the three requests qemu-io was asked for: ${totals?.[1]}`);

    t.match(linesOf(log, 2), [
      /: connected$/,
      /: export "golden" \(throwaway overlay\)/,
      /: disconnected \(client sent NBD_CMD_DISC\): export "golden", 0 requests, 0 bytes read, 0 bytes written, 0 bytes in the overlay, /,
    ]);
    t.match(linesOf(log, 3), [/: connected$/, /: disconnected \(client sent NBD_OPT_ABORT\): before choosing an export, /]);
    t.equal(linesOf(log, 3).length, 2, 'nbdinfo --list chose no export');
    t.notMatch(log, /debug:/, 'no debug lines without -v');
    t.equal((await server.stop()).code, 0);
  });
}
