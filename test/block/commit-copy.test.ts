// The copy loop of `overlay commit`: which pieces are written and which left as holes, the
// read-back that catches a write that did not land, a failed flush failing the copy, and an
// abort stopping it between windows.

import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { type CopyTarget, copyImage, firstDifference, nonZeroRuns, WINDOW, ZERO_GRAIN } from '../../lib/block/commit-copy.js';
import { DataFile } from '../../lib/block/data-file.js';
import { O_CREAT_EXCL_RDWR } from '../../lib/block/syscalls.js';
import { patternBytes } from './helpers.js';

const G = ZERO_GRAIN;

t.test('nonZeroRuns: runs of grains that are not all zero; a partial last grain counts', async (t) => {
  const cases: Array<[string, Buffer, Array<[number, number]>]> = [
    ['empty', Buffer.alloc(0), []],
    ['all zero', Buffer.alloc(3 * G), []],
    ['all data', Buffer.alloc(3 * G, 1), [[0, 3 * G]]],
    ['one byte in the middle grain', setByte(Buffer.alloc(3 * G), G + 100), [[G, 2 * G]]],
    ['last byte of a grain', setByte(Buffer.alloc(3 * G), 2 * G - 1), [[G, 2 * G]]],
    [
      'first and last grains',
      setByte(setByte(Buffer.alloc(3 * G), 0), 3 * G - 1),
      [
        [0, G],
        [2 * G, 3 * G],
      ],
    ],
    ['partial last grain', setByte(Buffer.alloc(2 * G + 10), 2 * G + 5), [[2 * G, 2 * G + 10]]],
    ['partial last grain of zeros', setByte(Buffer.alloc(G + 10), 0), [[0, G]]],
  ];
  for (const [what, buf, runs] of cases) t.same(nonZeroRuns(buf), runs, what);
});

function setByte(buf: Buffer, at: number): Buffer {
  buf[at] = 7;
  return buf;
}

t.test('firstDifference', async (t) => {
  t.equal(firstDifference(Buffer.from('abc'), Buffer.from('abc')), -1);
  t.equal(firstDifference(Buffer.from('abc'), Buffer.from('abd')), 2);
  t.equal(firstDifference(Buffer.alloc(10000), setByte(Buffer.alloc(10000), 9000)), 9000);
});

/** An image of pattern bytes with zero windows, as a source. */
function patternSource(size: number): { bytes: Buffer; compose: (start: number, dest: Buffer) => Promise<void> } {
  const bytes = patternBytes(size, 5);
  bytes.fill(0, WINDOW - 2 * G, WINDOW);
  return {
    bytes,
    compose: async (start, dest) => {
      bytes.copy(dest, 0, start, start + dest.length);
    },
  };
}

async function target(dir: string): Promise<DataFile> {
  return DataFile.open(join(dir, 'out.img'), O_CREAT_EXCL_RDWR, 0o644);
}

/** `out`, counting its reads and syncs. */
function counting(out: DataFile): CopyTarget & { reads: number; syncs: number } {
  const counted = {
    reads: 0,
    syncs: 0,
    path: out.path,
    truncate: (n: number) => out.truncate(n),
    write: (b: Buffer, p: number) => out.write(b, p),
    read: (b: Buffer, p: number) => {
      counted.reads++;
      return out.read(b, p);
    },
    sync: () => {
      counted.syncs++;
      return out.sync();
    },
  };
  return counted;
}

t.test('copies the image, holes where zero, flushed, verified, with progress per phase', async (t) => {
  const dir = t.testdir();
  const size = 2 * WINDOW + 1234;
  const source = patternSource(size);
  const out = await target(dir);
  const counted = counting(out);
  const seen: Array<[string, number]> = [];
  const written = await copyImage(source, counted, { size, progress: (phase, done) => seen.push([phase, done]) });
  await out.close();
  t.equal(written, size - 2 * G);
  t.ok(readFileSync(out.path).equals(source.bytes));
  t.equal(counted.syncs, 1, 'flushed once');
  // Cumulative bytes, one report per window: copy first, then verify.
  const phases = seen.map(([phase]) => phase);
  t.same(phases, ['copy', 'copy', 'copy', 'verify', 'verify', 'verify']);
  for (const phase of ['copy', 'verify']) {
    const done = seen.filter(([p]) => p === phase).map(([, d]) => d);
    t.ok(
      done.every((d, i) => d > (done[i - 1] ?? 0)),
      `${phase}: grows`,
    );
    t.equal(done.at(-1), size, `${phase}: ends at the size`);
  }
});

t.test('verify: false and flush: false leave out the read-back and the fdatasync', async (t) => {
  for (const [verify, flush] of [
    [false, false],
    [false, true],
    [true, false],
  ] as const) {
    const dir = t.testdir();
    const size = 2 * WINDOW + 1234;
    const source = patternSource(size);
    const out = await target(dir);
    const counted = counting(out);
    const phases: string[] = [];
    await copyImage(source, counted, { size, verify, flush, progress: (phase) => phases.push(phase) });
    await out.close();
    t.ok(readFileSync(out.path).equals(source.bytes), `verify ${verify}, flush ${flush}: the image is whole`);
    t.equal(counted.reads > 0, verify, `verify ${verify}: read back or not`);
    t.equal(phases.includes('verify'), verify, `verify ${verify}: a verify phase or none`);
    t.equal(counted.syncs, flush ? 1 : 0, `flush ${flush}: synced or not`);
  }
});

/** `out`, but a write past the first window never lands. */
function dropsWritesPastFirstWindow(out: DataFile): CopyTarget {
  return {
    path: out.path,
    truncate: (n) => out.truncate(n),
    write: (b, p) => (p >= WINDOW ? Promise.resolve() : out.write(b, p)),
    read: (b, p) => out.read(b, p),
    sync: () => out.sync(),
  };
}

t.test('without verify, a write that does not land goes unseen (what the read-back is for)', async (t) => {
  const dir = t.testdir();
  const size = WINDOW + 5000;
  const out = await target(dir);
  t.teardown(() => out.close());
  const lossy = dropsWritesPastFirstWindow(out);
  await t.resolves(copyImage(patternSource(size), lossy, { size, verify: false }));
});

t.test('a write that does not land fails the verification, naming the offset', async (t) => {
  const dir = t.testdir();
  const size = WINDOW + 5000;
  const out = await target(dir);
  t.teardown(() => out.close());
  const lossy = dropsWritesPastFirstWindow(out);
  await t.rejects(copyImage(patternSource(size), lossy, { size }), {
    code: 'EIO',
    message: `verification failed: ${out.path} differs from base + overlay at offset ${WINDOW}`,
  });
});

t.test('a failed flush fails the copy', async (t) => {
  const dir = t.testdir();
  const size = 3 * WINDOW;
  const out = await target(dir);
  t.teardown(() => out.close());
  const failing: CopyTarget = {
    path: out.path,
    truncate: (len) => out.truncate(len),
    write: (b, p) => out.write(b, p),
    read: (b, p) => out.read(b, p),
    sync: () => Promise.reject(Object.assign(new Error('EIO: sync'), { code: 'EIO' })),
  };
  await t.rejects(copyImage(patternSource(size), failing, { size }), { code: 'EIO', message: 'EIO: sync' });
});

t.test('an abort stops between windows; a failing source stops the others', async (t) => {
  const dir = t.testdir();
  const size = 8 * WINDOW;
  const out = await target(dir);
  t.teardown(() => out.close());
  const controller = new AbortController();
  controller.abort(new Error('stop'));
  await t.rejects(copyImage(patternSource(size), out, { size, signal: controller.signal }), /stop/);
  let composed = 0;
  const broken = {
    compose: async () => {
      composed++;
      throw new Error('read error');
    },
  };
  await t.rejects(copyImage(broken, out, { size }), /read error/);
  t.ok(composed <= 4, `no window taken after the first failure (${composed})`);
});
