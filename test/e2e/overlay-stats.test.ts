// `nbd-cow overlay stats DIR` on two named overlays written by python3-libnbd through the
// server: blocks written with the same bytes (in one overlay or both, at any offset) count as
// duplicates, WRITE_ZEROES with NO_HOLE as all-zero data, a WRITE of zeros and a TRIM as no
// data at all, a block written with the base's own bytes as "same as base" (--base) only at
// its own offset; the numbers are exact in text and JSON, the same while the server holds the
// overlays (their last flushed maps) as after it stopped, and nothing in the directory changes.
// Then --help, and what is not a directory of overlays.

import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import t from 'tap';
import { openBase } from '../../lib/block/base-image.js';
import { guardBase, makePatternBase, sha256File } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { describeRun } from '../helpers/processes.js';
import { pySession } from '../helpers/py-session.js';
import { runCli, startServe } from '../helpers/server-process.js';

const MiB = 1024 * 1024;
const SIZE = 8 * MiB;
const BS = 4096;
const b64 = (b: Buffer): string => b.toString('base64');
/** One block of byte `n`. */
const fill = (n: number): Buffer => Buffer.alloc(BS, n);

/** The sha256 of every file in `dir` (the overlays and their lock files). */
async function snapshot(dir: string, names: readonly string[]): Promise<string[]> {
  return Promise.all(names.map((n) => sha256File(join(dir, n))));
}

if (requireClients(t, [], true)) {
  t.test('stats of two named overlays written through the server', async (t) => {
    const dir = t.testdir();
    const overlays = join(dir, 'overlays');
    const base = await makePatternBase(dir, SIZE, 'golden.img');
    const baseBytes = readFileSync(base);
    const baseBlock = (offset: number): Buffer => baseBytes.subarray(offset, offset + BS);
    const guard = await guardBase(t, base);
    const server = await startServe(t, base, ['--overlay-dir', overlays, '--overlays', 'named']);
    const py = pySession(t);
    await py.ok({ op: 'connect', h: 'a', uri: `${server.uri}@a` });
    await py.ok({ op: 'connect', h: 'b', uri: `${server.uri}@b` });
    // a: 1 2 1 3 at 0; two blocks of zeros as data at 1 MiB; the base's own block at 2 MiB.
    await py.ok({ op: 'pwrite', h: 'a', offset: 0, data: b64(Buffer.concat([fill(1), fill(2), fill(1), fill(3)])) });
    await py.ok({ op: 'zero', h: 'a', offset: MiB, length: 2 * BS, no_hole: true });
    await py.ok({ op: 'pwrite', h: 'a', offset: 2 * MiB, data: b64(baseBlock(2 * MiB)) });
    // b: 1 4 at 0; 2 at 64 KiB; 100 bytes into a base block at 4 MiB (copied up: one new block);
    // the base's block of 2 MiB at 5 MiB; zeros at 6 MiB and a trim at 7 MiB (no data).
    await py.ok({ op: 'pwrite', h: 'b', offset: 0, data: b64(Buffer.concat([fill(1), fill(4)])) });
    await py.ok({ op: 'pwrite', h: 'b', offset: 65536, data: b64(fill(2)) });
    await py.ok({ op: 'pwrite', h: 'b', offset: 4 * MiB + 100, data: b64(Buffer.alloc(100, 0x62)) });
    await py.ok({ op: 'pwrite', h: 'b', offset: 5 * MiB, data: b64(baseBlock(2 * MiB)) });
    await py.ok({ op: 'pwrite', h: 'b', offset: 6 * MiB, data: b64(Buffer.alloc(BS)) });
    await py.ok({ op: 'trim', h: 'b', offset: 7 * MiB, length: 65536 });
    await py.ok({ op: 'flush', h: 'a' });
    await py.ok({ op: 'flush', h: 'b' });
    writeFileSync(join(overlays, 'junk.cow'), 'not an overlay\n');
    const names = ['named-golden@a.cow', 'named-golden@b.cow', 'named-golden@a.cow.lock', 'named-golden@b.cow.lock', 'junk.cow'];
    const before = await snapshot(overlays, names);

    // While the server holds both: their last flushed maps, read without disturbing it.
    const busy = await runCli(['overlay', 'stats', '--json', '--base', base, overlays]);
    t.equal(busy.code, 0, describeRun(busy));
    t.match(
      busy.stderr,
      /^nbd-cow: warning: skipping: overlay .*junk\.cow: file is 15 bytes, too short for an overlay header\n$/,
    );
    t.same(await snapshot(overlays, names), before, 'stats changed no file, lock files included');
    t.same(await py.pread('a', 0, BS), fill(1), 'the server still serves the overlay');

    await py.ok({ op: 'close', h: 'a' });
    await py.ok({ op: 'close', h: 'b' });
    t.equal(await py.end(), 0);
    t.equal((await server.stop()).code, 0);

    const stopped = await snapshot(overlays, ['named-golden@a.cow', 'named-golden@b.cow']);
    const fingerprint = (await openBase(base)).identity.fingerprint;
    const files = [join(overlays, 'named-golden@a.cow'), join(overlays, 'named-golden@b.cow')];
    const actualSize = files.reduce((sum, f) => sum + statSync(f).blocks * 512, 0);
    const withBase = await runCli(['overlay', 'stats', '--json', '--base', base, overlays]);
    t.equal(withBase.code, 0, describeRun(withBase));
    const expected = {
      directory: overlays,
      base: { filename: base, size: SIZE, fingerprint },
      scanned: 2,
      skipped: [
        {
          filename: join(overlays, 'junk.cow'),
          reason: `overlay ${join(overlays, 'junk.cow')}: file is 15 bytes, too short for an overlay header`,
        },
      ],
      'other-base': [],
      groups: [
        {
          'base-size': SIZE,
          'base-fingerprint': fingerprint,
          'block-size': BS,
          overlays: files,
          'actual-size': actualSize,
          // a: 4 + 2 + 1, b: 2 + 1 + 1 + 1; not b's zeros at 6 MiB nor its trim.
          data: { blocks: 12, bytes: 12 * BS },
          zero: { blocks: 2, bytes: 2 * BS },
          'same-as-base': { blocks: 1, bytes: BS },
          // 1, 2, 3, 4, the base's 2 MiB block, b's block at 4 MiB.
          distinct: 6,
          // 1 three times, 2 twice, the base's 2 MiB block twice (at 2 MiB in a, at 5 MiB in b).
          duplicates: { blocks: 7, bytes: 7 * BS },
          // The 2 MiB block is stored all the same: b holds it where the base differs.
          stored: { contents: 6, bytes: 6 * BS },
          saved: { bytes: 6 * BS, percent: 50, zero: 2 * BS, 'same-as-base': BS, duplicates: 3 * BS },
        },
      ],
      total: { 'data-bytes': 12 * BS, 'saved-bytes': 6 * BS, 'saved-percent': 50, 'actual-size': actualSize },
    };
    t.same(JSON.parse(withBase.stdout), expected);
    t.same(JSON.parse(busy.stdout), expected, 'the same while the server held them (all was flushed)');

    const plain = await runCli(['overlay', 'stats', '--json', overlays]);
    t.equal(plain.code, 0, describeRun(plain));
    t.match(JSON.parse(plain.stdout).groups[0], {
      distinct: 6,
      duplicates: { blocks: 7, bytes: 7 * BS },
      stored: { contents: 6, bytes: 6 * BS },
      // Without --base the extra copy of the base's block counts as a repeated content.
      saved: { bytes: 6 * BS, percent: 50, zero: 2 * BS, duplicates: 4 * BS },
    });
    t.equal(JSON.parse(plain.stdout).groups[0]['same-as-base'], undefined);

    const text = await runCli(['overlay', 'stats', '--base', base, overlays]);
    t.equal(text.code, 0, describeRun(text));
    t.equal(
      text.stdout,
      `directory: ${overlays}
base:      ${base} (size ${SIZE}, fingerprint ${fingerprint})
overlays:  2 read, 1 skipped, 0 of other bases left out
groups:    1

group 1 of 1:     base size ${SIZE}, block size 4096
base fingerprint: ${fingerprint}
overlays:         2
disk size:        ${text.stdout.match(/^disk size: +(.*)$/m)?.[1]}
data:             12 blocks, 48 KiB (49152 bytes)
all zeros:        2 blocks, 8 KiB (8192 bytes)
same as base:     1 blocks, 4 KiB (4096 bytes)
distinct:         6 contents
duplicates:       7 blocks, 28 KiB (28672 bytes)
stored:           6 contents, 24 KiB (24576 bytes)
saved:            24 KiB (24576 bytes), 50% of data: 8 KiB all zeros, 4 KiB same as base, 12 KiB repeated contents
`,
    );
    t.match(text.stdout, new RegExp(`^disk size: +.* \\(${actualSize} bytes\\)$`, 'm'));
    t.same(await snapshot(overlays, ['named-golden@a.cow', 'named-golden@b.cow']), stopped, 'stats changed neither overlay');
    await guard.check();
  });
}

t.test('--help, and what is not a directory of overlays', async (t) => {
  const help = await runCli(['overlay', 'stats', '--help']);
  t.equal(help.code, 0, describeRun(help));
  t.match(help.stdout, /^Usage: nbd-cow overlay stats \[options\] <dir>\n/);
  t.match(help.stdout, /--base <base>/);
  t.match(help.stdout, /--json/);
  t.match(help.stdout, /\n {2}saved +data bytes - stored bytes\n/);

  const dir = t.testdir({ 'file.txt': 'x' });
  const missing = await runCli(['overlay', 'stats', join(dir, 'nope')]);
  t.equal(missing.code, 1, describeRun(missing));
  t.equal(missing.stdout, '');
  t.equal(missing.stderr, `nbd-cow: cannot read overlay directory ${join(dir, 'nope')}: no such directory\n`);
  const file = await runCli(['overlay', 'stats', '--json', join(dir, 'file.txt')]);
  t.equal(file.code, 1, describeRun(file));
  t.equal(file.stderr, `nbd-cow: cannot read overlay directory ${join(dir, 'file.txt')}: not a directory\n`);

  const empty = join(dir, 'empty');
  await mkdir(empty);
  const none = await runCli(['overlay', 'stats', '--json', empty]);
  t.equal(none.code, 0, describeRun(none));
  t.equal(none.stderr, '');
  t.same(JSON.parse(none.stdout), {
    directory: empty,
    scanned: 0,
    skipped: [],
    groups: [],
    total: { 'data-bytes': 0, 'saved-bytes': 0, 'saved-percent': 0, 'actual-size': 0 },
  });
  const badBase = await runCli(['overlay', 'stats', '--base', join(dir, 'nope.img'), empty]);
  t.equal(badBase.code, 1, describeRun(badBase));
  t.match(badBase.stderr, /^nbd-cow: cannot open base image .*nope\.img: no such file \(ENOENT\)\n$/);
});
