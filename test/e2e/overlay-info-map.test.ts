// `nbd-cow overlay info` and `overlay map` on a named overlay written by python3-libnbd through
// the server: the counts follow what was written (WRITE as data, WRITE_ZEROES and TRIM as zero,
// WRITE_ZEROES with NO_HOLE as data), `map --json` agrees with `qemu-img map --output=json` of
// the live export, a data extent's offset is where its bytes are in the file, and while the
// server holds the overlay, info says so (in use, dirty) without disturbing it.

import { openSync, readSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { openBase } from '../../lib/block/base-image.js';
import { guardBase, makePatternBase, sha256File } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { describeRun, run } from '../helpers/processes.js';
import { pySession } from '../helpers/py-session.js';
import { runCli, startServe } from '../helpers/server-process.js';

const MiB = 1024 * 1024;
const SIZE = 8 * MiB;
/** Header page and one map page (2048 blocks fit in 512 bytes): data starts at 8 KiB. */
const DATA_OFFSET = 8192;
const b64 = (b: Buffer): string => b.toString('base64');

interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  offset?: number;
}

/** [start, length, zero, data] with neighbours of equal (zero, data) merged. */
function comparable(entries: readonly MapEntry[]): Array<[number, number, boolean, boolean]> {
  const out: Array<[number, number, boolean, boolean]> = [];
  for (const e of entries) {
    const last = out.at(-1);
    if (last !== undefined && last[2] === e.zero && last[3] === e.data && last[0] + last[1] === e.start) last[1] += e.length;
    else out.push([e.start, e.length, e.zero, e.data]);
  }
  return out;
}

if (requireClients(t, ['qemu-img'], true)) {
  t.test('info and map of a named overlay written through the server', async (t) => {
    const dir = t.testdir();
    const overlays = join(dir, 'overlays');
    const base = await makePatternBase(dir, SIZE, 'golden.img');
    const guard = await guardBase(t, base);
    const server = await startServe(t, base, ['--overlay-dir', overlays, '--overlays', 'named']);
    const file = join(overlays, 'named-golden@t.cow');
    const py = pySession(t);
    await py.ok({ op: 'connect', h: 'a', uri: `${server.uri}@t` });
    const written = Buffer.alloc(65536, 0x61);
    await py.ok({ op: 'pwrite', h: 'a', offset: 0, data: b64(written) }); // data: 16 blocks
    await py.ok({ op: 'pwrite', h: 'a', offset: MiB + 10, data: b64(Buffer.alloc(100, 0x62)) }); // data: 1 (copy-up)
    await py.ok({ op: 'zero', h: 'a', offset: 2 * MiB, length: MiB }); // zero: 256
    await py.ok({ op: 'trim', h: 'a', offset: 4 * MiB, length: 65536 }); // zero: 16
    await py.ok({ op: 'zero', h: 'a', offset: 5 * MiB, length: 8192, no_hole: true }); // data: 2
    await py.ok({ op: 'flush', h: 'a' });

    // While the server holds it: info reads it without disturbing it, and says so.
    const busy = await runCli(['overlay', 'info', '--json', file]);
    t.equal(busy.code, 0, describeRun(busy));
    t.match(JSON.parse(busy.stdout), { 'in-use': true, 'in-use-by': server.pid, dirty: true });
    const live = await run('qemu-img', ['map', '--output=json', '-f', 'raw', `${server.uri}@t`]);
    t.equal(live.code, 0, describeRun(live));
    t.same(await py.pread('a', 0, 65536), written, 'the server still serves the overlay');

    await py.ok({ op: 'close', h: 'a' });
    t.equal(await py.end(), 0);
    t.equal((await server.stop()).code, 0);
    const before = await sha256File(file);

    const info = await runCli(['overlay', 'info', '--json', file]);
    t.equal(info.code, 0, describeRun(info));
    t.same(JSON.parse(info.stdout), {
      filename: file,
      format: 'nbd-cow-overlay',
      'format-version': 1,
      'block-size': 4096,
      'virtual-size': SIZE,
      'base-size': SIZE,
      'base-fingerprint': (await openBase(base)).identity.fingerprint,
      blocks: { total: 2048, data: 19, zero: 272, base: 1757 },
      bytes: { data: 19 * 4096, zero: 272 * 4096, base: 1757 * 4096 },
      'file-length': JSON.parse(info.stdout)['file-length'],
      'actual-size': JSON.parse(info.stdout)['actual-size'],
      dirty: false,
      frozen: false,
      'in-use': false,
    });
    const text = await runCli(['overlay', 'info', file]);
    t.equal(text.code, 0, describeRun(text));
    t.match(text.stdout, /^data: {13}19 blocks, 76 KiB \(77824 bytes\)$/m);
    t.match(text.stdout, /^zero: {13}272 blocks, 1.06 MiB \(1114112 bytes\)$/m);
    t.match(text.stdout, /^state: {12}clean \(closed cleanly\)\nfrozen: {11}no\nin use: {11}no\n$/m);

    const mapped = await runCli(['overlay', 'map', '--json', file]);
    t.equal(mapped.code, 0, describeRun(mapped));
    const entries = JSON.parse(mapped.stdout) as MapEntry[];
    t.same(comparable(entries), comparable(JSON.parse(live.stdout) as MapEntry[]), 'as qemu-img map saw the live export');
    t.same(
      entries.map((e) => [e.start, e.length, e.depth, e.zero, e.data]),
      [
        [0, 65536, 0, false, true],
        [65536, MiB - 65536, 1, false, true],
        [MiB, 4096, 0, false, true],
        [MiB + 4096, MiB - 4096, 1, false, true],
        [2 * MiB, MiB, 0, true, false],
        [3 * MiB, MiB, 1, false, true],
        [4 * MiB, 65536, 0, true, false],
        [4 * MiB + 65536, MiB - 65536, 1, false, true],
        [5 * MiB, 8192, 0, false, true],
        [5 * MiB + 8192, 3 * MiB - 8192, 1, false, true],
      ],
      'depth 0 = the overlay, 1 = the base',
    );
    for (const e of entries) {
      t.equal(e.present, true);
      t.equal(e.offset, e.zero ? undefined : e.depth === 0 ? DATA_OFFSET + e.start : e.start, `offset of ${e.start}`);
    }
    const fd = openSync(file, 'r');
    const stored = Buffer.alloc(65536);
    readSync(fd, stored, 0, 65536, entries[0]?.offset ?? -1);
    t.same(stored, written, "a data extent's offset is where its bytes are in the overlay file");

    const table = await runCli(['overlay', 'map', file]);
    t.equal(table.code, 0, describeRun(table));
    t.match(table.stdout, /^start {11}length {10}state {2}offset\n0 {15}0x10000 {9}data {3}0x2000\n0x10000 {9}0xf0000 {9}base\n/);
    t.equal(table.stdout.trim().split('\n').length, 11, 'a header and one row per extent');

    t.equal(await sha256File(file), before, 'info and map changed nothing');
    await guard.check();
  });
}

t.test('--help, and a file that is not an overlay', async (t) => {
  for (const command of ['info', 'map', 'commit']) {
    const help = await runCli(['overlay', command, '--help']);
    t.equal(help.code, 0, describeRun(help));
    t.match(help.stdout, new RegExp(`^Usage: nbd-cow overlay ${command} \\[options\\] <file>`));
  }
  const dir = t.testdir();
  const base = await makePatternBase(dir, MiB);
  for (const command of ['info', 'map']) {
    const r = await runCli(['overlay', command, base]);
    t.equal(r.code, 1, describeRun(r));
    t.equal(r.stdout, '');
    t.match(r.stderr, /^nbd-cow: overlay .*base\.img: overlay header: bad magic 0x[0-9a-f]+ \(not an nbd-cow overlay\)\n$/);
  }
});
