// Overlay space limits through the CLI and python3-libnbd: --max-overlay-size refuses a named
// overlay's writes past 1 MiB with ENOSPC, and --max-overlay-dir-size the throwaway ones past
// 1.5 MiB in all; refused writes change nothing, the connections go on, overwrites and trims
// work at the limit, a disconnect gives its space back, the named overlay at its limit checks
// clean after an orderly stop and counts its data again after a restart. Bad sizes are refused.

import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { guardBase, makePatternBase } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { waitForDir } from '../helpers/files.js';
import { describeRun } from '../helpers/processes.js';
import { type PySession, pySession } from '../helpers/py-session.js';
import { matchStderr, runCli, startServe } from '../helpers/server-process.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 8 * MiB;
const CHUNK = 64 * KiB;
/** How python3-libnbd names the errno of an NBD_ENOSPC reply (nbd.Error.errno). */
const ENOSPC = 'ENOSPC';
const LIMITS = ['--max-overlay-size', '1M', '--max-overlay-dir-size', '1536K'];
const b64 = (b: Buffer): string => b.toString('base64');

/** Write CHUNK-sized pattern chunks at `start`, `start + stride`, … until one fails; the offsets written. */
async function writeUntilRefused(
  t: Test,
  py: PySession,
  h: string,
  start: number,
  stride: number,
  model: Buffer,
): Promise<number[]> {
  const written: number[] = [];
  for (let offset = start; offset + CHUNK <= SIZE; offset += stride) {
    const data = Buffer.alloc(CHUNK, 1 + (written.length % 250));
    const reply = await py.call({ op: 'pwrite', h, offset, data: b64(data) });
    if (!reply.ok) {
      t.equal(reply.errno, ENOSPC, `${h}: the first refused write gets ENOSPC (${reply.error})`);
      return written;
    }
    data.copy(model, offset);
    written.push(offset);
  }
  t.fail(`${h}: no write was refused`);
  return written;
}

/** Whether every range [offset, length] reads on connection `h` as in `model`. */
async function readsBack(py: PySession, h: string, model: Buffer, ranges: [number, number][]): Promise<boolean> {
  for (const [offset, length] of ranges) {
    if (!(await py.pread(h, offset, length)).equals(model.subarray(offset, offset + length))) return false;
  }
  return true;
}

const chunks = (offsets: number[]): [number, number][] => offsets.map((o) => [o, CHUNK]);

if (requireClients(t, [], true)) {
  t.test('writes past the limits get ENOSPC; nothing is lost; the named overlay stays consistent', async (t) => {
    const dir = t.testdir();
    const overlays = join(dir, 'overlays');
    const base = await makePatternBase(dir, SIZE, 'golden.img');
    const guard = await guardBase(t, base);
    const named = join(overlays, 'named-golden@q.cow');
    let server = await startServe(t, base, ['--overlay-dir', overlays, ...LIMITS]);
    const py = pySession(t);
    const q = Buffer.from(readFileSync(base));
    const p = Buffer.from(readFileSync(base));

    // The named overlay: sixteen 64 KiB chunks fill its 1 MiB, the seventeenth is refused.
    await py.ok({ op: 'connect', h: 'q', uri: `${server.uri}@q` });
    const written = await writeUntilRefused(t, py, 'q', 0, 128 * KiB, q);
    t.equal(written.length, 16, '1 MiB of 64 KiB writes fit');
    const refusedAt = 16 * 128 * KiB;
    const partial = await py.call({ op: 'pwrite', h: 'q', offset: refusedAt + 100, data: b64(Buffer.alloc(10, 9)) });
    t.equal(partial.errno, ENOSPC, 'a 10-byte write that needs a copy-up is refused too');
    const zeroes = await py.call({ op: 'zero', h: 'q', offset: refusedAt, length: CHUNK, no_hole: true });
    t.equal(zeroes.errno, ENOSPC, 'so is WRITE_ZEROES with NO_HOLE');
    t.ok(
      await readsBack(py, 'q', q, [...chunks(written), [refusedAt, 2 * CHUNK]]),
      'all written reads back; refused ranges read the base',
    );

    // At the limit: overwrites need no space, a trim gives some back.
    const again = Buffer.alloc(CHUNK, 0xee);
    await py.ok({ op: 'pwrite', h: 'q', offset: 0, data: b64(again) });
    again.copy(q, 0);
    await py.ok({ op: 'pwrite', h: 'q', offset: 128 * KiB + 5, data: b64(Buffer.alloc(1000, 0xdd)) });
    q.fill(0xdd, 128 * KiB + 5, 128 * KiB + 1005);
    await py.ok({ op: 'trim', h: 'q', offset: 256 * KiB, length: CHUNK });
    q.fill(0, 256 * KiB, 256 * KiB + CHUNK);
    await py.ok({ op: 'zero', h: 'q', offset: 384 * KiB, length: CHUNK });
    q.fill(0, 384 * KiB, 384 * KiB + CHUNK);
    const back = await writeUntilRefused(t, py, 'q', refusedAt, 128 * KiB, q);
    t.equal(back.length, 2, 'the trimmed and zeroed chunks are space for two new ones');
    await py.ok({ op: 'flush', h: 'q' });
    t.ok(await readsBack(py, 'q', q, [[0, 3 * MiB]]), 'the named overlay reads as the model');

    // A throwaway overlay gets what is left of the directory's 1.5 MiB: 512 KiB.
    await py.ok({ op: 'connect', h: 'p', uri: server.uri });
    const pWritten = await writeUntilRefused(t, py, 'p', 4 * MiB, CHUNK, p);
    t.equal(pWritten.length, 8, '512 KiB fit in the directory budget');
    await matchStderr(t, server, /overlay directory holds 1572864 of its 1572864 bytes/, 'the server says which limit');
    await py.ok({ op: 'connect', h: 'p2', uri: server.uri });
    const full = await py.call({ op: 'pwrite', h: 'p2', offset: 0, data: b64(Buffer.alloc(4096, 1)) });
    t.equal(full.errno, ENOSPC, 'another connection cannot write while the directory is full');
    t.ok(await readsBack(py, 'p2', p, [[0, MiB]]), 'but reads the base');
    t.ok(await readsBack(py, 'p', p, [[4 * MiB, 768 * KiB]]), 'p reads back all it wrote');

    // p's disconnect deletes its overlay and gives its 512 KiB back.
    await py.ok({ op: 'close', h: 'p' });
    await waitForDir(overlays, (names) => !names.some((n) => n.startsWith('eph-')));
    const p2 = Buffer.from(readFileSync(base));
    const p2Written = await writeUntilRefused(t, py, 'p2', 0, CHUNK, p2);
    t.equal(p2Written.length, 8, 'the space came back at the disconnect');
    t.ok(await readsBack(py, 'q', q, [[0, 3 * MiB]]), 'the named overlay is untouched');

    await py.ok({ op: 'close', h: 'p2' });
    await py.ok({ op: 'close', h: 'q' });
    t.equal((await server.stop()).code, 0, 'orderly stop');
    let check = await runCli(['overlay', 'check', named, '--base', base]);
    t.equal(check.code, 0, `the named overlay at its limit checks clean: ${check.stdout} ${describeRun(check)}`);

    // Restarted: the overlay's 1 MiB of data counts again at once.
    server = await startServe(t, base, ['--overlay-dir', overlays, ...LIMITS]);
    await py.ok({ op: 'connect', h: 'q', uri: `${server.uri}@q` });
    const reopened = await py.call({ op: 'pwrite', h: 'q', offset: 6 * MiB, data: b64(Buffer.alloc(4096, 3)) });
    t.equal(reopened.errno, ENOSPC, 'a new block is refused after the restart');
    await py.ok({ op: 'pwrite', h: 'q', offset: 0, data: b64(Buffer.alloc(4096, 4)) });
    q.fill(4, 0, 4096);
    const { sha256 } = await py.ok({ op: 'sha256', h: 'q' });
    t.equal(sha256, createHash('sha256').update(q).digest('hex'), 'an overwrite works, and everything reads back');
    await py.ok({ op: 'close', h: 'q' });
    t.equal(await py.end(), 0);
    t.equal((await server.stop()).code, 0);
    check = await runCli(['overlay', 'check', named, '--base', base]);
    t.equal(check.code, 0, `clean after the second stop: ${check.stdout}`);
    await guard.check();
  });
}

t.test('a bad size is one line on stderr and a non-zero exit', async (t) => {
  const dir = t.testdir();
  const base = await makePatternBase(dir, 64 * KiB);
  for (const args of [
    ['--max-overlay-size', '10X'],
    ['--max-overlay-size', '0'],
    ['--max-overlay-dir-size', '1.5G'],
    ['--block-size', '3000'],
  ]) {
    const r = await runCli(['serve', base, '-p', '0', ...args]);
    t.not(r.code, 0, `${args.join(' ')}: ${describeRun(r)}`);
    t.equal(r.stderr.trim().split('\n').length, 1, `${args.join(' ')}: one line: ${r.stderr.trim()}`);
    t.match(r.stderr, args[0] ?? '', 'naming the option');
  }
});
