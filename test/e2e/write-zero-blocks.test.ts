// Whole blocks of zeros sent as NBD_CMD_WRITE (python3-libnbd pwrite, qemu-io `write -P 0`) are
// stored as the zero state, in named and throwaway overlays: `nbdinfo --map` and `qemu-img map`
// show holes that read as zeros, and the overlay file's allocated size does not grow, even where
// the zeros replace data. With --elide-base-matches a WRITE of the base's own bytes leaves the
// blocks in the base (qemu:allocation-depth 2), and the file does not grow either.

import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { guardBase, makePatternBase, sha256 } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { coalesce } from '../helpers/extents.js';
import { describeRun, run } from '../helpers/processes.js';
import { pySession } from '../helpers/py-session.js';
import { startServe } from '../helpers/server-process.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 8 * MiB;
const b64 = (b: Buffer): string => b.toString('base64');

interface MapEntry {
  readonly offset: number;
  readonly length: number;
  readonly type: number;
}

/** `nbdinfo --map[=CONTEXT] --json URI` as [length, type] runs. */
async function nbdinfoMap(uri: string, context = 'base:allocation'): Promise<Array<[number, number]>> {
  const r = await run('nbdinfo', [`--map=${context}`, '--json', uri]);
  if (r.code !== 0) throw new Error(describeRun(r));
  return coalesce((JSON.parse(r.stdout) as MapEntry[]).map((e) => [e.length, e.type] as [number, number]));
}

/** Bytes the file system allocated to `path`. */
function allocated(path: string): number {
  return statSync(path).blocks * 512;
}

if (requireClients(t, ['nbdinfo', 'qemu-io', 'qemu-img'], true)) {
  t.test('zero blocks written to a named overlay are holes, and the file does not grow', async (t) => {
    const dir = t.testdir();
    const overlays = join(dir, 'overlays');
    const base = await makePatternBase(dir, SIZE, 'golden.img');
    const guard = await guardBase(t, base);
    const model = Buffer.from(readFileSync(base));
    const server = await startServe(t, base, ['--overlay-dir', overlays]);
    const uri = `${server.uri}@z`;
    const file = join(overlays, 'named-golden@z.cow');
    const py = pySession(t);
    await py.ok({ op: 'connect', uri });

    const data = Buffer.alloc(64 * KiB, 0x5a);
    await py.ok({ op: 'pwrite', offset: 0, data: b64(data) }); // creates the file: 64 KiB of data
    data.copy(model, 0);
    await py.ok({ op: 'flush' });
    const before = allocated(file);

    await py.ok({ op: 'pwrite', offset: MiB, data: b64(Buffer.alloc(2 * MiB)) });
    await py.ok({ op: 'pwrite', offset: 0, data: b64(Buffer.alloc(32 * KiB)) }); // over half the data
    model.fill(0, MiB, 3 * MiB);
    model.fill(0, 0, 32 * KiB);
    await py.ok({ op: 'flush' });
    const qemuIo = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0 4M 1M', uri]);
    t.equal(qemuIo.code, 0, describeRun(qemuIo));
    model.fill(0, 4 * MiB, 5 * MiB);
    await py.ok({ op: 'flush' });

    t.ok(allocated(file) <= before, `the overlay file did not grow (${before} -> ${allocated(file)} bytes)`);
    t.same(
      await nbdinfoMap(uri),
      [
        [32 * KiB, 3], // hole, zero: the zeros over half the data
        [MiB - 32 * KiB, 0], // the data left, then the base
        [2 * MiB, 3],
        [MiB, 0],
        [MiB, 3], // qemu-io's zeros
        [3 * MiB, 0],
      ],
      'nbdinfo --map: the zero blocks are holes',
    );
    const qemuMap = await run('qemu-img', ['map', '--output=json', '-f', 'raw', uri]);
    t.equal(qemuMap.code, 0, describeRun(qemuMap));
    const zeroAt = (offset: number): unknown =>
      (JSON.parse(qemuMap.stdout) as Array<{ start: number; length: number; zero: boolean; data: boolean }>).find(
        (e) => e.start <= offset && offset < e.start + e.length,
      );
    t.match(zeroAt(2 * MiB), { zero: true, data: false }, 'qemu-img map: zero, not data');
    t.match(zeroAt(4 * MiB + 512 * KiB), { zero: true, data: false });
    t.match(zeroAt(6 * MiB), { zero: false, data: true }, 'the base is data');
    t.equal((await py.ok({ op: 'sha256' })).sha256, sha256(model), 'reads back as the model');
    t.equal(await py.end(), 0);
    t.equal((await server.stop()).code, 0);
    await guard.check();
  });

  t.test('a throwaway overlay stores no zero block either', async (t) => {
    const dir = t.testdir();
    const overlays = join(dir, 'overlays');
    const base = await makePatternBase(dir, SIZE, 'golden.img');
    const server = await startServe(t, base, ['--overlay-dir', overlays]);
    const py = pySession(t);
    await py.ok({ op: 'connect', uri: server.uri, contexts: ['base:allocation'] });
    await py.ok({ op: 'pwrite', offset: 0, data: b64(Buffer.alloc(4 * KiB, 1)) });
    await py.ok({ op: 'flush' });
    const [name] = readdirSync(overlays).filter((n) => n.startsWith('eph-'));
    const file = join(overlays, name ?? 'missing');
    const before = allocated(file);
    await py.ok({ op: 'pwrite', offset: 2 * MiB, data: b64(Buffer.alloc(4 * MiB)) });
    await py.ok({ op: 'flush' });
    t.ok(allocated(file) <= before, `the overlay file did not grow (${before} -> ${allocated(file)} bytes)`);
    const status = (await py.ok({ op: 'block_status', offset: 0, length: SIZE })).contexts as Record<
      string,
      Array<[number, number]>
    >;
    t.same(coalesce(status['base:allocation'] ?? []), [
      [2 * MiB, 0],
      [4 * MiB, 3],
      [2 * MiB, 0],
    ]);
    t.equal(await py.end(), 0);
  });

  t.test('--elide-base-matches: the base written back over the base stays the base', async (t) => {
    const dir = t.testdir();
    const overlays = join(dir, 'overlays');
    const base = await makePatternBase(dir, SIZE, 'golden.img');
    const guard = await guardBase(t, base);
    const model = Buffer.from(readFileSync(base));
    const server = await startServe(t, base, ['--overlay-dir', overlays, '--elide-base-matches']);
    const uri = `${server.uri}@b`;
    const file = join(overlays, 'named-golden@b.cow');
    const py = pySession(t);
    await py.ok({ op: 'connect', uri });
    const data = Buffer.alloc(128 * KiB, 0x33);
    await py.ok({ op: 'pwrite', offset: MiB, data: b64(data) }); // data at [1M, 1M+128K)
    data.copy(model, MiB);
    await py.ok({ op: 'flush' });
    const before = allocated(file);
    // The base's bytes over the first half of the data and over [5M, 7M) of the base (past the
    // pattern base's band of zero sectors, which would become the zero state).
    const original = readFileSync(base);
    await py.ok({ op: 'pwrite', offset: MiB, data: b64(original.subarray(MiB, MiB + 64 * KiB)) });
    await py.ok({ op: 'pwrite', offset: 5 * MiB, data: b64(original.subarray(5 * MiB, 7 * MiB)) });
    original.copy(model, MiB, MiB, MiB + 64 * KiB);
    await py.ok({ op: 'flush' });
    t.ok(allocated(file) <= before, `the overlay file did not grow (${before} -> ${allocated(file)} bytes)`);
    t.same(await nbdinfoMap(uri, 'qemu:allocation-depth'), [
      [MiB + 64 * KiB, 2], // the base, the base's bytes written back included
      [64 * KiB, 1], // the data left
      [SIZE - MiB - 128 * KiB, 2],
    ]);
    t.equal((await py.ok({ op: 'sha256' })).sha256, sha256(model), 'reads back as the model');
    t.equal(await py.end(), 0);
    t.equal((await server.stop()).code, 0);
    await guard.check();
  });
}
