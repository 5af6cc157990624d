// Block status as qemu sees it.
// - qemu-img map --output=json on a fresh export: one data extent covering the whole (odd) size.
// - After writes: the overlay lives only as long as the writing connection, and qemu-img map
//   cannot write, so the map after writes is taken inside the one qemu-io session that wrote,
//   reading qemu:allocation-depth through qemu's x-dirty-bitmap option (depth 1 = overlay has
//   bit 0 set, so qemu reports it "not allocated"; depth 2 = base reports "allocated").
//   base:allocation data/zero after writes is checked with libnbd in block-status-after-writes.
// - A later qemu-img map (new connection) shows the pristine base again.

import { join } from 'node:path';
import t from 'tap';
import { guardBase, makePatternBase } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { describeRun, run } from '../helpers/processes.js';
import { startServe } from '../helpers/server-process.js';

const MiB = 1024 * 1024;
const SIZE = 16 * MiB + 1536;

interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present?: boolean;
  zero: boolean;
  data: boolean;
}

/** qemu --image-opts for the TCP export at `uri`, reading `context` as block status. */
function imageOpts(uri: string, context?: string): string {
  const m = /^nbd:\/\/127\.0\.0\.1:(\d+)\/(.*)$/.exec(uri);
  if (m === null) throw new Error(`unexpected URI ${uri}`);
  const opts = `driver=nbd,server.type=inet,server.host=127.0.0.1,server.port=${m[1]},export=${m[2]}`;
  return context === undefined ? opts : `${opts},x-dirty-bitmap=${context}`;
}

/** qemu-io map lines -> [offset, length, allocated]. */
function parseQemuIoMap(stdout: string): Array<[number, number, boolean]> {
  const out: Array<[number, number, boolean]> = [];
  const re = /\((0x[0-9a-f]+)\) bytes\s+(not allocated|allocated) at offset .*?\((0x[0-9a-f]+)\)/g;
  for (const m of stdout.matchAll(re)) out.push([Number(m[3]), Number(m[1]), m[2] === 'allocated']);
  return out;
}

if (requireClients(t, ['qemu-img', 'qemu-io'])) {
  t.test('qemu-img map of a fresh export', async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, SIZE);
    const server = await startServe(t, base, ['--overlay-dir', join(dir, 'overlays')]);

    const r = await run('qemu-img', ['map', '--output=json', '-f', 'raw', server.uri]);
    t.equal(r.code, 0, describeRun(r));
    const map = JSON.parse(r.stdout) as MapEntry[];
    t.equal(map.length, 1, 'one extent');
    t.match(map[0], { start: 0, length: SIZE, data: true, zero: false }, 'all data (the base shows no holes)');
  });

  t.test('map after writes, in the writing connection, then pristine again', async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, SIZE);
    const guard = await guardBase(t, base);
    const server = await startServe(t, base, ['--overlay-dir', join(dir, 'overlays')]);

    // Before: qemu:allocation-depth is 2 (base) everywhere.
    const before = await run('qemu-io', ['-r', '--image-opts', imageOpts(server.uri, 'qemu:allocation-depth'), '-c', 'map']);
    t.equal(before.code, 0, describeRun(before));
    t.same(parseQemuIoMap(before.stdout), [[0, SIZE, true]], 'all base before writes');

    const io = await run('qemu-io', [
      '--image-opts',
      imageOpts(server.uri, 'qemu:allocation-depth'),
      '-c',
      'write -P 0xab 0 64k',
      '-c',
      'write -z 1M 1M',
      '-c',
      'discard 4M 1M',
      '-c',
      `write -P 0xcd ${SIZE - 1000} 1000`, // the partial last block
      '-c',
      'map',
    ]);
    t.equal(io.code, 0, describeRun(io));
    t.same(
      parseQemuIoMap(io.stdout),
      [
        [0, 64 * 1024, false], // overlay (depth 1)
        [64 * 1024, MiB - 64 * 1024, true], // base
        [MiB, MiB, false],
        [2 * MiB, 2 * MiB, true],
        [4 * MiB, MiB, false],
        [5 * MiB, SIZE - 1536 - 5 * MiB, true],
        [SIZE - 1536, 1536, false], // the last block is 1536 bytes
      ],
      'written, zeroed and discarded ranges are in the overlay, the rest is base',
    );

    // A new connection: qemu-img map sees the base again, in both contexts.
    const after = await run('qemu-img', ['map', '--output=json', '-f', 'raw', server.uri]);
    t.equal(after.code, 0, describeRun(after));
    t.match(JSON.parse(after.stdout), [{ start: 0, length: SIZE, data: true, zero: false }]);
    const depth = await run('qemu-io', ['-r', '--image-opts', imageOpts(server.uri, 'qemu:allocation-depth'), '-c', 'map']);
    t.same(parseQemuIoMap(depth.stdout), [[0, SIZE, true]], 'all base in a new connection');

    t.equal((await server.stop()).code, 0);
    await guard.check();
  });
}
