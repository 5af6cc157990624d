// Block status after writes, in the same connection (python3-libnbd; nbdinfo cannot write):
// data → base:allocation 0, zero/trim → HOLE|ZERO (3); qemu:allocation-depth 1 in the overlay,
// 2 for the base. Unaligned zeroes fill partial blocks with data. A new connection is pristine.

import t from 'tap';
import { requireClients } from '../helpers/clients.js';
import { coalesce, flagsAt } from '../helpers/extents.js';
import { pySession } from '../helpers/py-session.js';
import { servePatternBase } from '../helpers/server-process.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 16 * MiB + 1536;
type Extents = Array<[number, number]>;

if (requireClients(t, [], true)) {
  t.test('block status in both contexts after write, zero and trim', async (t) => {
    const { guard, server } = await servePatternBase(t, SIZE);
    const py = pySession(t);
    const contexts = ['base:allocation', 'qemu:allocation-depth'];
    await py.ok({ op: 'connect', uri: server.uri, contexts });
    const info = await py.ok({ op: 'info' });
    t.match(info, { contexts: { 'base:allocation': true, 'qemu:allocation-depth': true } });

    const status = async (offset: number, length: number): Promise<Record<string, Extents>> =>
      (await py.ok({ op: 'block_status', offset, length })).contexts as Record<string, Extents>;

    const fresh = await status(0, SIZE);
    t.same(coalesce(fresh['base:allocation'] ?? []), [[SIZE, 0]], 'fresh: all data');
    t.same(coalesce(fresh['qemu:allocation-depth'] ?? []), [[SIZE, 2]], 'fresh: all base');

    const data = Buffer.alloc(64 * KiB, 0xab).toString('base64');
    await py.ok({ op: 'pwrite', offset: 1 * MiB, data }); // data at [1M, 1M+64K)
    await py.ok({ op: 'zero', offset: 2 * MiB, length: 256 * KiB }); // hole at [2M, 2M+256K)
    await py.ok({ op: 'trim', offset: 3 * MiB, length: 128 * KiB }); // hole at [3M, 3M+128K)
    await py.ok({ op: 'zero', offset: 4 * MiB, length: 64 * KiB, no_hole: true }); // real zeros: data
    await py.ok({ op: 'zero', offset: 5 * MiB + 1000, length: 10000 }); // unaligned zero
    await py.ok({ op: 'pwrite', offset: SIZE - 100, data: Buffer.alloc(100, 1).toString('base64') });

    const after = await status(0, SIZE);
    const alloc = coalesce(after['base:allocation'] ?? []);
    const depth = coalesce(after['qemu:allocation-depth'] ?? []);
    t.equal(
      alloc.reduce((n, [l]) => n + l, 0),
      SIZE,
      'base:allocation covers the export',
    );
    t.equal(
      depth.reduce((n, [l]) => n + l, 0),
      SIZE,
      'qemu:allocation-depth covers the export',
    );
    t.same(
      alloc,
      [
        [2 * MiB, 0],
        [256 * KiB, 3],
        [MiB - 256 * KiB, 0],
        [128 * KiB, 3],
        [5 * MiB + 4 * KiB - 3 * MiB - 128 * KiB, 0], // up to the first whole zeroed block at 5M+4K
        [4 * KiB, 3], // [5M+4K, 5M+8K): the one whole block inside [5M+1000, 5M+11000)
        [SIZE - 5 * MiB - 8 * KiB, 0],
      ],
      'base:allocation: zero and trim are holes, data and no-hole zeros are data',
    );
    t.same(
      depth,
      [
        [1 * MiB, 2],
        [64 * KiB, 1],
        [MiB - 64 * KiB, 2],
        [256 * KiB, 1],
        [MiB - 256 * KiB, 2],
        [128 * KiB, 1],
        [MiB - 128 * KiB, 2],
        [64 * KiB, 1],
        [MiB - 64 * KiB, 2],
        [12 * KiB, 1], // [5M, 5M+12K): every block the unaligned zero touched
        [SIZE - 1536 - 5 * MiB - 12 * KiB, 2],
        [1536, 1], // the partial last block
      ],
      'qemu:allocation-depth: 1 where written, 2 elsewhere',
    );

    // Spot checks with a small request in the middle of a range.
    const mid = await status(2 * MiB + 4096, 4096);
    t.equal(flagsAt(mid['base:allocation'] ?? [], 2 * MiB + 4096, 2 * MiB + 4096), 3);
    t.equal(flagsAt(mid['qemu:allocation-depth'] ?? [], 2 * MiB + 4096, 2 * MiB + 4096), 1);
    const tail = await status(SIZE - 1, 1);
    t.same(tail['base:allocation'], [[1, 0]], 'the last byte is data');

    // Content matches the block status.
    const zeros = (await py.ok({ op: 'pread', offset: 5 * MiB + 1000, length: 10000 })).data as string;
    t.ok(
      Buffer.from(zeros, 'base64').every((b) => b === 0),
      'unaligned zero reads as zeros',
    );
    await py.ok({ op: 'close' });

    // New connection: pristine.
    await py.ok({ op: 'connect', h: 'b', uri: server.uri, contexts });
    const again = (await py.ok({ op: 'block_status', h: 'b', offset: 0, length: SIZE })).contexts as Record<string, Extents>;
    t.same(coalesce(again['base:allocation'] ?? []), [[SIZE, 0]], 'new connection: all data');
    t.same(coalesce(again['qemu:allocation-depth'] ?? []), [[SIZE, 2]], 'new connection: all base');
    t.equal(await py.end(), 0);

    t.equal((await server.stop()).code, 0);
    await guard.check();
  });
}
