// `overlay stats` counts what the overlays of a directory hold: data blocks, all-zero ones,
// ones equal to the base (with --base), distinct contents and repeated ones, compared only
// within one base and block size; what a shared store would keep and save; the last flushed
// map of an overlay in use. Files that are not overlays are skipped with a reason, nothing on
// disk changes, and the content table stays small and correct as it grows.

import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { openBase } from '../../lib/block/base-image.js';
import { Bitmap, BLOCK_DATA, BLOCK_ZERO } from '../../lib/block/bitmap.js';
import { OverlayFile } from '../../lib/block/overlay-file.js';
import {
  ContentSet,
  dataRuns,
  GroupCounter,
  NEW,
  NOW_REPEATED,
  NOW_STORED,
  type OverlayStats,
  overlayStats,
  READ_CHUNK,
} from '../../lib/block/overlay-stats.js';
import { formatStats, percentOf, STATS_DEFINITIONS, skipWarning, statsJson } from '../../lib/block/overlay-stats-report.js';
import { makeBase, patternBytes } from './helpers.js';

const BS = 4096;
/** 16 whole blocks and a partial one of 1000 bytes. */
const SIZE = 16 * BS + 1000;
const P1 = patternBytes(BS, 11);
const P2 = patternBytes(BS, 12);
const P3 = patternBytes(BS, 13);
const Y = patternBytes(1000, 14);

interface OverlaySpec {
  readonly blockSize?: number;
  readonly size?: number;
  /** [block, bytes] written as data. */
  readonly data: ReadonlyArray<readonly [number, Buffer]>;
  /** [first, count] set to the zero state. */
  readonly zero?: ReadonlyArray<readonly [number, number]>;
  /** Leave it as a crashed server would: flushed, then more writes never flushed, not marked clean. */
  readonly unflushed?: ReadonlyArray<readonly [number, Buffer]>;
}

/** Write an overlay of `base` at `path` as `spec` says. */
async function writeOverlay(path: string, basePath: string, spec: OverlaySpec): Promise<void> {
  const base = await openBase(basePath);
  const blockSize = spec.blockSize ?? BS;
  const overlay = await OverlayFile.create(path, { blockSize, size: spec.size ?? base.size, baseIdentity: base.identity });
  await base.close();
  for (const [block, bytes] of spec.data) {
    await overlay.writeData(block * blockSize, bytes);
    overlay.map.setRange(block, Math.ceil(bytes.length / blockSize), BLOCK_DATA);
  }
  for (const [first, count] of spec.zero ?? []) overlay.map.setRange(first, count, BLOCK_ZERO);
  if (spec.unflushed === undefined) {
    await overlay.markClean();
  } else {
    await overlay.flush();
    for (const [block, bytes] of spec.unflushed) {
      await overlay.writeData(block * blockSize, bytes);
      overlay.map.setRange(block, 1, BLOCK_DATA);
    }
  }
  await overlay.close();
}

function sha(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/** Every file of `dir` and its sha256. */
function snapshot(dir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of readdirSync(dir, { withFileTypes: true })) {
    if (name.isFile()) out[name.name] = sha(join(dir, name.name));
  }
  return out;
}

/**
 * Base A (17 blocks, the last 1000 bytes) and in `overlays/`:
 *   a  golden@a  A, 4 KiB  P1 P2 P1 zeros . base[5] ... base[16] (partial)
 *   b  golden@b  A, 4 KiB  P1 P3 . . . . . P2 base[5] zero zero ... Y (partial)
 *   c  other@c   B, 4 KiB  P1
 *   d  golden@d  A, 8 KiB  P1+P1
 * plus junk.cow (not an overlay), a directory and a dangling link named *.cow, a lock file and
 * a text file.
 */
async function makeDir(t: Test): Promise<{ dir: string; overlays: string; baseA: string; baseB: string; bytesA: Buffer }> {
  const dir = t.testdir();
  const overlays = join(dir, 'overlays');
  mkdirSync(overlays);
  const { path: baseA, bytes: bytesA } = makeBase(dir, SIZE, 1, 'a.img');
  const { path: baseB } = makeBase(dir, SIZE, 2, 'b.img');
  const block = (b: number): Buffer => bytesA.subarray(b * BS, Math.min((b + 1) * BS, SIZE));
  await writeOverlay(join(overlays, 'named-golden@a.cow'), baseA, {
    data: [
      [0, P1],
      [1, P2],
      [2, P1],
      [3, Buffer.alloc(BS)],
      [5, block(5)],
      [16, block(16)],
    ],
  });
  await writeOverlay(join(overlays, 'named-golden@b.cow'), baseA, {
    data: [
      [0, P1],
      [1, P3],
      [7, P2],
      [8, block(5)],
      [16, Y],
    ],
    zero: [[9, 2]],
  });
  await writeOverlay(join(overlays, 'named-other@c.cow'), baseB, { data: [[0, P1]] });
  await writeOverlay(join(overlays, 'named-golden@d.cow'), baseA, { blockSize: 2 * BS, data: [[0, Buffer.concat([P1, P1])]] });
  writeFileSync(join(overlays, 'junk.cow'), Buffer.alloc(8192, 0x41));
  writeFileSync(join(overlays, 'named-golden@a.cow.lock'), '999999999\n');
  writeFileSync(join(overlays, 'notes.txt'), 'not an overlay, not *.cow\n');
  mkdirSync(join(overlays, 'sub.cow'));
  symlinkSync(join(dir, 'nowhere'), join(overlays, 'dangling.cow'));
  return { dir, overlays, baseA, baseB, bytesA };
}

t.test('counts by group: data, zeros, distinct, duplicates, stored and saved; junk skipped; nothing changes', async (t) => {
  const { overlays, baseA, baseB } = await makeDir(t);
  const before = snapshot(overlays);
  const stats = await overlayStats(overlays);
  const idA = (await openBase(baseA)).identity;
  const idB = (await openBase(baseB)).identity;
  t.equal(stats.directory, overlays);
  t.equal(stats.base, undefined);
  t.equal(stats.scanned, 4);
  t.same(stats.otherBase, []);
  t.same(
    stats.skipped.map((s) => s.path),
    [join(overlays, 'junk.cow')],
    'only the regular file that is not an overlay; the directory and the dangling link are not candidates',
  );
  t.match(stats.skipped[0]?.reason, /^overlay .*junk\.cow: overlay header: bad magic/);
  t.equal(stats.groups.length, 3);
  const [a, d, c] = stats.groups;
  t.same(a, {
    base: idA,
    blockSize: BS,
    overlays: [join(overlays, 'named-golden@a.cow'), join(overlays, 'named-golden@b.cow')],
    allocatedBytes: a?.allocatedBytes,
    data: { blocks: 11, bytes: 9 * BS + 2000 },
    zero: { blocks: 1, bytes: BS },
    sameAsBase: undefined,
    distinct: 6,
    duplicates: { blocks: 7, bytes: 7 * BS },
    stored: { contents: 6, bytes: 4 * BS + 2000 },
    savedBytes: 5 * BS,
  });
  t.ok((a?.allocatedBytes ?? 0) > 0, 'disk size adds up st_blocks');
  t.match(d, {
    base: idA,
    blockSize: 2 * BS,
    overlays: [join(overlays, 'named-golden@d.cow')],
    data: { blocks: 1, bytes: 2 * BS },
    distinct: 1,
    duplicates: { blocks: 0, bytes: 0 },
    stored: { contents: 1, bytes: 2 * BS },
    savedBytes: 0,
  });
  t.match(c, {
    base: idB,
    blockSize: BS,
    data: { blocks: 1, bytes: BS },
    distinct: 1,
    duplicates: { blocks: 0, bytes: 0 },
    savedBytes: 0,
  });
  t.same(snapshot(overlays), before, 'no file in the directory changed');
});

t.test('--base: only overlays of that base, and data equal to the base needs no storing', async (t) => {
  const { overlays, baseA } = await makeDir(t);
  const stats = await overlayStats(overlays, { base: baseA });
  const idA = (await openBase(baseA)).identity;
  t.same(stats.base, { path: baseA, identity: idA });
  t.same(stats.otherBase, [join(overlays, 'named-other@c.cow')]);
  t.equal(stats.scanned, 3);
  t.equal(stats.groups.length, 2);
  t.match(stats.groups[0], {
    data: { blocks: 11, bytes: 9 * BS + 2000 },
    zero: { blocks: 1, bytes: BS },
    sameAsBase: { blocks: 2, bytes: BS + 1000 },
    distinct: 6,
    duplicates: { blocks: 7, bytes: 7 * BS },
    // base[5] is stored all the same: b holds it at block 8, where the base differs.
    stored: { contents: 5, bytes: 4 * BS + 1000 },
    savedBytes: 5 * BS + 1000,
  });
  t.match(stats.groups[1], { blockSize: 2 * BS, sameAsBase: { blocks: 0, bytes: 0 }, savedBytes: 0 });
  await t.rejects(
    overlayStats(overlays, { base: join(overlays, 'nope.img') }),
    /cannot open base image .*nope\.img: no such file/,
  );
});

t.test('an overlay in use is read as its last flushed map', async (t) => {
  const dir = t.testdir();
  const { path: base } = makeBase(dir, SIZE);
  await writeOverlay(join(dir, 'named-golden@busy.cow'), base, { data: [[0, P1]], unflushed: [[1, P1]] });
  writeFileSync(join(dir, 'named-golden@busy.cow.lock'), `${process.pid}\n`);
  const stats = await overlayStats(dir);
  t.match(stats.groups[0], { data: { blocks: 1, bytes: BS }, distinct: 1, duplicates: { blocks: 0 } });
  t.equal(readFileSync(join(dir, 'named-golden@busy.cow.lock'), 'utf8'), `${process.pid}\n`, 'the lock is left alone');
});

t.test('long runs are read a chunk at a time', async (t) => {
  const dir = t.testdir();
  const blocks = READ_CHUNK / BS + 100;
  const { path: base } = makeBase(dir, (blocks + 3) * BS);
  const contents = Array.from({ length: 7 }, (_, i) => patternBytes(BS, 100 + i));
  const run = Buffer.concat(Array.from({ length: blocks }, (_, i) => contents[i % 7] as Buffer));
  await writeOverlay(join(dir, 'eph-1-1.cow'), base, { data: [[1, run]] });
  const [g] = (await overlayStats(dir)).groups;
  t.match(g, {
    data: { blocks, bytes: blocks * BS },
    distinct: 7,
    duplicates: { blocks, bytes: blocks * BS },
    stored: { contents: 7, bytes: 7 * BS },
    savedBytes: (blocks - 7) * BS,
  });
});

t.test('a missing directory, a file, an empty directory', async (t) => {
  const dir = t.testdir({ 'file.txt': 'x' });
  await t.rejects(overlayStats(join(dir, 'nope')), {
    code: 'ENOENT',
    message: /^cannot read overlay directory .*nope: no such directory$/,
  });
  await t.rejects(overlayStats(join(dir, 'file.txt')), {
    code: 'ENOTDIR',
    message: /^cannot read overlay directory .*file\.txt: not a directory$/,
  });
  const empty = join(dir, 'empty');
  mkdirSync(empty);
  const stats = await overlayStats(empty);
  t.same(stats, { directory: empty, base: undefined, scanned: 0, skipped: [], otherBase: [], groups: [] });
  t.equal(formatStats(stats), `directory: ${empty}\noverlays:  0 read, 0 skipped\ngroups:    0\n`);
  t.same(JSON.parse(statsJson(stats)), {
    directory: empty,
    scanned: 0,
    skipped: [],
    groups: [],
    total: { 'data-bytes': 0, 'saved-bytes': 0, 'saved-percent': 0, 'actual-size': 0 },
  });
});

t.test('ContentSet: what each add changes', async (t) => {
  const set = new ContentSet();
  const h1 = randomBytes(32);
  const h2 = randomBytes(32);
  t.equal(set.add(h1, false), NEW, 'new, not to be stored (same as base)');
  t.equal(set.add(h1, false), NOW_REPEATED);
  t.equal(set.add(h1, true), NOW_STORED, 'stored once a copy needs it');
  t.equal(set.add(h1, true), 0);
  t.equal(set.add(h2, true), NEW | NOW_STORED);
  t.equal(set.add(h2, false), NOW_REPEATED);
  const flagsOnly = Buffer.from(h2);
  flagsOnly[12] = (flagsOnly[12] as number) ^ 1; // a difference in the bits kept for flags
  t.equal(set.add(flagsOnly, true), 0, 'the low 3 bits of word 3 are not compared');
  t.equal(set.size, 2);
});

t.test('ContentSet grows, keeps every hash, and stays within 32 bytes a distinct content', async (t) => {
  const set = new ContentSet(4);
  const hashes = Array.from({ length: 20000 }, () => randomBytes(16));
  t.ok(
    hashes.every((h) => set.add(h, true) === (NEW | NOW_STORED)),
    'each is new',
  );
  t.equal(set.size, hashes.length);
  t.ok(
    hashes.every((h) => set.add(h, true) === NOW_REPEATED),
    'each is found again after the growths',
  );
  t.equal(set.size, hashes.length);
  const bytesPerContent = (set.capacity * 16) / set.size;
  t.ok(bytesPerContent <= 32 && bytesPerContent >= 16, `${bytesPerContent.toFixed(1)} bytes per distinct content`);
  // Hashes that land on one slot probe past each other and wrap around the end.
  const crowded = new ContentSet(8);
  for (let i = 0; i < 5; i++) {
    const h = Buffer.alloc(16);
    h.writeUInt32LE(7, 0);
    h.writeUInt32LE(i, 4);
    t.equal(crowded.add(h, false), NEW);
  }
  t.equal(crowded.size, 5);
});

t.test('GroupCounter: a short block is its own content', async (t) => {
  const base = { size: 1, fingerprint: '0'.repeat(64) };
  const g = new GroupCounter(base, BS, false);
  g.add(P1);
  g.add(P1.subarray(0, 1000));
  g.add(Buffer.alloc(1000));
  g.add(Buffer.alloc(BS));
  t.match(g.result(), {
    data: { blocks: 4, bytes: 2 * BS + 2000 },
    zero: { blocks: 2, bytes: BS + 1000 },
    distinct: 2,
    duplicates: { blocks: 0, bytes: 0 },
    stored: { contents: 2, bytes: BS + 1000 },
    savedBytes: BS + 1000,
  });
});

t.test('dataRuns: the runs of data blocks, in order', async (t) => {
  const map = new Bitmap(40);
  map.setRange(1, 2, BLOCK_DATA);
  map.setRange(3, 5, BLOCK_ZERO);
  map.setRange(8, 20, BLOCK_DATA);
  map.setRange(39, 1, BLOCK_DATA);
  t.same(
    [...dataRuns(map, 40)],
    [
      [1, 2],
      [8, 20],
      [39, 1],
    ],
  );
  t.same([...dataRuns(new Bitmap(10), 10)], []);
});

/** The counts of the first test with --base, as the report sees them. */
function sample(): OverlayStats {
  const base = { size: SIZE, fingerprint: 'ab'.repeat(32) };
  return {
    directory: '/srv/overlays',
    base: { path: '/srv/a.img', identity: base },
    scanned: 3,
    skipped: [{ path: '/srv/overlays/junk.cow', reason: 'overlay /srv/overlays/junk.cow: overlay header: bad magic' }],
    otherBase: ['/srv/overlays/named-other@c.cow'],
    groups: [
      {
        base,
        blockSize: BS,
        overlays: ['/srv/overlays/named-golden@a.cow', '/srv/overlays/named-golden@b.cow'],
        allocatedBytes: 81920,
        data: { blocks: 11, bytes: 9 * BS + 2000 },
        zero: { blocks: 1, bytes: BS },
        sameAsBase: { blocks: 2, bytes: BS + 1000 },
        distinct: 6,
        duplicates: { blocks: 7, bytes: 7 * BS },
        stored: { contents: 5, bytes: 4 * BS + 1000 },
        savedBytes: 5 * BS + 1000,
      },
      {
        base,
        blockSize: 2 * BS,
        overlays: ['/srv/overlays/named-golden@d.cow'],
        allocatedBytes: 16384,
        data: { blocks: 1, bytes: 2 * BS },
        zero: { blocks: 0, bytes: 0 },
        sameAsBase: { blocks: 0, bytes: 0 },
        distinct: 1,
        duplicates: { blocks: 0, bytes: 0 },
        stored: { contents: 1, bytes: 2 * BS },
        savedBytes: 0,
      },
    ],
  };
}

t.test('the text report: one block per group, then the total', async (t) => {
  t.equal(
    formatStats(sample()),
    `directory: /srv/overlays
base:      /srv/a.img (size 66536, fingerprint ${'ab'.repeat(32)})
overlays:  3 read, 1 skipped, 1 of other bases left out
groups:    2

group 1 of 2:     base size 66536, block size 4096
base fingerprint: ${'ab'.repeat(32)}
overlays:         2
disk size:        80 KiB (81920 bytes)
data:             11 blocks, 38 KiB (38864 bytes)
all zeros:        1 blocks, 4 KiB (4096 bytes)
same as base:     2 blocks, 4.98 KiB (5096 bytes)
distinct:         6 contents
duplicates:       7 blocks, 28 KiB (28672 bytes)
stored:           5 contents, 17 KiB (17384 bytes)
saved:            21 KiB (21480 bytes), 55.3% of data: 4 KiB all zeros, 4.98 KiB same as base, 12 KiB repeated contents

group 2 of 2:     base size 66536, block size 8192
base fingerprint: ${'ab'.repeat(32)}
overlays:         1
disk size:        16 KiB (16384 bytes)
data:             1 blocks, 8 KiB (8192 bytes)
all zeros:        0 blocks, 0 B (0 bytes)
same as base:     0 blocks, 0 B (0 bytes)
distinct:         1 contents
duplicates:       0 blocks, 0 B (0 bytes)
stored:           1 contents, 8 KiB (8192 bytes)
saved:            0 B (0 bytes), 0% of data: 0 B all zeros, 0 B same as base, 0 B repeated contents

total data:      46 KiB (47056 bytes)
total saved:     21 KiB (21480 bytes), 45.6% of data
total disk size: 96 KiB (98304 bytes)
`,
  );
});

t.test('the JSON report', async (t) => {
  const json = JSON.parse(statsJson(sample()));
  t.same(json.base, { filename: '/srv/a.img', size: SIZE, fingerprint: 'ab'.repeat(32) });
  t.same(json.skipped, [
    { filename: '/srv/overlays/junk.cow', reason: 'overlay /srv/overlays/junk.cow: overlay header: bad magic' },
  ]);
  t.same(json['other-base'], ['/srv/overlays/named-other@c.cow']);
  t.same(json.groups[0], {
    'base-size': SIZE,
    'base-fingerprint': 'ab'.repeat(32),
    'block-size': BS,
    overlays: ['/srv/overlays/named-golden@a.cow', '/srv/overlays/named-golden@b.cow'],
    'actual-size': 81920,
    data: { blocks: 11, bytes: 38864 },
    zero: { blocks: 1, bytes: 4096 },
    'same-as-base': { blocks: 2, bytes: 5096 },
    distinct: 6,
    duplicates: { blocks: 7, bytes: 28672 },
    stored: { contents: 5, bytes: 17384 },
    saved: { bytes: 21480, percent: 55.3, zero: 4096, 'same-as-base': 5096, duplicates: 12288 },
  });
  t.same(json.total, { 'data-bytes': 47056, 'saved-bytes': 21480, 'saved-percent': 45.6, 'actual-size': 98304 });
  const plain = { ...sample(), base: undefined, groups: sample().groups.map((g) => ({ ...g, sameAsBase: undefined })) };
  const noBase = JSON.parse(statsJson(plain));
  t.equal(noBase.base, undefined);
  t.equal(noBase['other-base'], undefined);
  t.equal(noBase.groups[0]['same-as-base'], undefined);
  t.equal(noBase.groups[0].saved['same-as-base'], undefined);
  t.notMatch(formatStats(plain), /same as base|other bases/);
});

t.test('helpers: percent, the warning line, the definitions', async (t) => {
  t.equal(percentOf(1, 3), 33.3);
  t.equal(percentOf(0, 0), 0);
  t.equal(percentOf(5, 5), 100);
  t.equal(skipWarning('overlay /x.cow: bad'), 'nbd-cow: warning: skipping: overlay /x.cow: bad\n');
  t.match(STATS_DEFINITIONS, /saved +data bytes - stored bytes/);
});
