// `overlay commit` over temp files: the new image is byte for byte what the overlay reads, with
// holes wherever it reads as zeros (trimmed blocks and zeros of the base alike), for block sizes
// from 512 B to 1 MiB and a size that ends inside a block; the base and the overlay never
// change; every refusal is one error and leaves no file behind; --force lets through what it
// says; an abort removes NEW.tmp.

import { linkSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { openBase } from '../../lib/block/base-image.js';
import { CowDevice } from '../../lib/block/cow-device.js';
import { type CommitProgress, commitOverlay } from '../../lib/block/overlay-commit.js';
import { OverlayFile } from '../../lib/block/overlay-file.js';
import { acquireOverlayLock } from '../../lib/block/overlay-lock.js';
import { patternBytes, sha256File } from './helpers.js';

const MiB = 1024 * 1024;
/** Nine 1 MiB windows and a bit: the last window, grain and block are partial. */
const SIZE = 9 * MiB + 1000;
/** The base's zero band: whole grains, to be left as a hole. */
const ZERO_BAND: readonly [number, number] = [5 * MiB, 6 * MiB];

interface Made {
  readonly dir: string;
  readonly base: string;
  readonly file: string;
  /** What the overlay reads: the base with the writes applied. */
  readonly expected: Buffer;
}

/** A base with a zero band, and a kept overlay over it holding writes, a trim and zeros. */
async function makeOverlay(t: Test, blockSize = 4096, crash = false): Promise<Made> {
  const dir = t.testdir();
  const bytes = patternBytes(SIZE, 3);
  bytes.fill(0, ...ZERO_BAND);
  const basePath = join(dir, 'base.img');
  writeFileSync(basePath, bytes);
  const base = await openBase(basePath);
  const file = join(dir, 'named-golden@c.cow');
  const overlay = await OverlayFile.create(file, { blockSize, size: SIZE, baseIdentity: base.identity, atomic: true });
  const dev = new CowDevice({ base, blockSize, overlayPath: file, overlay, keep: true });
  const expected = Buffer.from(bytes);
  const write = async (offset: number, data: Buffer): Promise<void> => {
    await dev.write(offset, data, { fua: false });
    data.copy(expected, offset);
  };
  await write(0, Buffer.alloc(65536, 0xa1));
  await write(4 * MiB - 3000, patternBytes(10000, 9)); // across a window's end
  await write(ZERO_BAND[0] + 8192, Buffer.alloc(4096, 0xb2)); // data inside the base's zeros
  await write(SIZE - 500, Buffer.alloc(500, 0xc3)); // the partial last block
  await dev.trim(MiB, 2 * MiB, { fua: false }); // reads as zeros: a hole
  expected.fill(0, MiB, 3 * MiB);
  await dev.zero(7 * MiB, MiB, { fua: false, noHole: true }); // zeros stored as data: a hole too
  expected.fill(0, 7 * MiB, 8 * MiB);
  await dev.flush();
  if (crash) await overlay.close();
  else await dev.close();
  await base.close();
  return { dir, base: basePath, file, expected };
}

/** Bytes of `buf` in 4 KiB pieces that are not all zero. */
function nonZeroBytes(buf: Buffer): number {
  let n = 0;
  for (let at = 0; at < buf.length; at += 4096) {
    const piece = buf.subarray(at, at + 4096);
    if (piece.some((b) => b !== 0)) n += piece.length;
  }
  return n;
}

for (const blockSize of [512, 4096, 65536, 1024 * 1024]) {
  t.test(`block size ${blockSize}: the image is what the overlay reads, sparse where zero`, async (t) => {
    const { dir, base, file, expected } = await makeOverlay(t, blockSize);
    const sums = [sha256File(base), sha256File(file)];
    const output = join(dir, 'new.img');
    const seen: CommitProgress[] = [];
    const r = await commitOverlay(file, { base, output, onProgress: (p) => seen.push(p) });
    t.ok(readFileSync(output).equals(expected), 'byte for byte what the overlay reads');
    t.equal(r.size, SIZE);
    t.equal(r.writtenBytes, nonZeroBytes(expected), 'only pieces that are not all zero were written');
    const allocated = statSync(output).blocks * 512;
    t.equal(r.allocatedBytes, allocated);
    // The file system adds a block or two of its own (the extent tree).
    t.ok(allocated <= nonZeroBytes(expected) + 65536, `holes where zero: ${allocated} bytes allocated of ${SIZE}`);
    t.ok(allocated < SIZE - 3 * MiB, 'the trimmed, zeroed and zero-base MiBs take no space');
    t.same(r.overridden, []);
    t.same([sha256File(base), sha256File(file)], sums, 'the base and the overlay are unchanged');
    t.same(readdirSync(dir).sort(), ['base.img', 'named-golden@c.cow', 'new.img'], 'no NEW.tmp left');
    for (const phase of ['copy', 'verify'] as const) {
      const done = seen.filter((p) => p.phase === phase && p.total === SIZE).map((p) => p.done);
      t.same(
        done,
        [...done].sort((a, b) => a - b),
        `${phase}: progress grows`,
      );
      t.equal(done.at(-1), SIZE, `${phase}: and ends at the size`);
    }
    t.equal(
      seen.findIndex((p) => p.phase === 'verify'),
      seen.filter((p) => p.phase === 'copy').length,
      'copy, then verify',
    );
  });
}

t.test('an overlay of another base is refused, and nothing is written', async (t) => {
  const { dir, file } = await makeOverlay(t);
  const other = join(dir, 'other.img');
  writeFileSync(other, patternBytes(SIZE, 4));
  await t.rejects(commitOverlay(file, { base: other, output: join(dir, 'new.img'), force: true }), {
    code: 'EINVAL',
    message: /belongs to another base image: made for \(size \d+, fingerprint [0-9a-f]+…\), the base is/,
  });
  const shorter = join(dir, 'shorter.img');
  writeFileSync(shorter, patternBytes(4096, 4));
  await t.rejects(commitOverlay(file, { base: shorter, output: join(dir, 'new.img') }), /belongs to another base image/);
  t.notOk(
    readdirSync(dir).some((n) => n.startsWith('new.img')),
    'no NEW, no NEW.tmp',
  );
});

t.test('not closed cleanly: refused, --force commits its last flushed state', async (t) => {
  const { dir, base, file, expected } = await makeOverlay(t, 4096, true);
  const output = join(dir, 'new.img');
  await t.rejects(commitOverlay(file, { base, output }), {
    code: 'EBUSY',
    message: `overlay ${file} was not closed cleanly: run 'nbd-cow overlay check ${file} --base ${base} --repair' first, or --force to commit its last flushed state`,
  });
  const r = await commitOverlay(file, { base, output, force: true });
  t.same(r.overridden, ['overlay not closed cleanly']);
  t.ok(readFileSync(output).equals(expected), 'the flushed writes are all there');
});

t.test('in use by a live process: refused, --force commits', async (t) => {
  const { dir, base, file } = await makeOverlay(t);
  const lock = await acquireOverlayLock(`${file}.lock`, 'named overlay golden@c');
  t.teardown(() => lock.release());
  const output = join(dir, 'new.img');
  await t.rejects(commitOverlay(file, { base, output }), {
    code: 'EBUSY',
    message: new RegExp(`is in use by process ${process.pid} .*stop the server first, or --force`),
  });
  const r = await commitOverlay(file, { base, output, force: true });
  t.same(r.overridden, [`overlay in use by process ${process.pid}`]);
});

t.test('an existing NEW is refused; --force replaces it', async (t) => {
  const { dir, base, file, expected } = await makeOverlay(t);
  const output = join(dir, 'new.img');
  writeFileSync(output, 'old');
  await t.rejects(commitOverlay(file, { base, output }), {
    code: 'EEXIST',
    message: `${output} exists: not overwritten (--force replaces it)`,
  });
  t.equal(readFileSync(output, 'utf8'), 'old', 'left as it was');
  const r = await commitOverlay(file, { base, output, force: true });
  t.same(r.overridden, [`replaced ${output}`]);
  t.ok(readFileSync(output).equals(expected));
});

t.test('a leftover NEW.tmp is refused; --force removes it', async (t) => {
  const { dir, base, file } = await makeOverlay(t);
  const output = join(dir, 'new.img');
  writeFileSync(`${output}.tmp`, 'half');
  await t.rejects(commitOverlay(file, { base, output }), {
    code: 'EEXIST',
    message: `${output}.tmp exists (an interrupted commit, or one running now): remove it, or --force`,
  });
  await commitOverlay(file, { base, output, force: true });
  t.same(readdirSync(dir).sort(), ['base.img', 'named-golden@c.cow', 'new.img']);
});

t.test('NEW that is the base or the overlay is refused even with --force', async (t) => {
  const { dir, base, file } = await makeOverlay(t);
  const sums = [sha256File(base), sha256File(file)];
  linkSync(base, join(dir, 'link.img'));
  mkdirSync(join(dir, 'adir'));
  const cases: Array<[string, RegExp]> = [
    [base, /base\.img is the base image \(.*\): a commit never writes over its inputs/],
    [file, /named-golden@c\.cow is the overlay \(.*\): a commit never writes over its inputs/],
    [join(dir, 'link.img'), /link\.img is the base image/],
    [join(dir, 'adir'), /adir is a directory/],
  ];
  for (const [output, message] of cases) {
    await t.rejects(commitOverlay(file, { base, output, force: true }), message, output);
  }
  // NEW.tmp that is the base: `base.img.tmp` names it when NEW is `base.img` … through a link.
  linkSync(base, join(dir, 'x.img.tmp'));
  await t.rejects(commitOverlay(file, { base, output: join(dir, 'x.img'), force: true }), /x\.img\.tmp is the base image/);
  t.same([sha256File(base), sha256File(file)], sums, 'the base and the overlay are unchanged');
});

t.test('an abort stops the copy, removes NEW.tmp and says so', async (t) => {
  const { dir, base, file } = await makeOverlay(t);
  const output = join(dir, 'new.img');
  const controller = new AbortController();
  const aborted = commitOverlay(file, { base, output, signal: controller.signal, onProgress: () => controller.abort() });
  await t.rejects(aborted, {
    code: 'ECANCELED',
    message: `commit interrupted: ${output}.tmp removed, ${output} not written`,
  });
  t.same(readdirSync(dir).sort(), ['base.img', 'named-golden@c.cow']);
});

t.test('an overlay whose virtual size is not its base size is refused', async (t) => {
  const dir = t.testdir();
  const basePath = join(dir, 'base.img');
  writeFileSync(basePath, patternBytes(SIZE, 3));
  const base = await openBase(basePath);
  const file = join(dir, 'odd.cow');
  const overlay = await OverlayFile.create(file, { blockSize: 4096, size: SIZE - 4096, baseIdentity: base.identity });
  await overlay.markClean();
  await overlay.close();
  await base.close();
  await t.rejects(commitOverlay(file, { base: basePath, output: join(dir, 'new.img') }), {
    code: 'EINVAL',
    message: `overlay ${file}: virtual size ${SIZE - 4096} differs from the base size ${SIZE}`,
  });
});

t.test('a failure after NEW.tmp was made removes it and is thrown as it is', async (t) => {
  const { dir, base, file } = await makeOverlay(t);
  const output = join(dir, 'new.img');
  // A directory appears under the name NEW while the copy runs: the rename at the end fails.
  const r = commitOverlay(file, { base, output, onProgress: () => mkdirSync(output, { recursive: true }) });
  await t.rejects(r, { code: 'EISDIR' });
  t.same(readdirSync(dir).sort(), ['base.img', 'named-golden@c.cow', 'new.img'], 'NEW.tmp removed');
  t.ok(statSync(output).isDirectory(), 'what appeared is left alone');
});

t.test('NEW under a regular file is one error', async (t) => {
  const { base, file } = await makeOverlay(t);
  await t.rejects(commitOverlay(file, { base, output: join(base, 'new.img') }), { code: 'ENOTDIR' });
});

t.test('a missing overlay or base is one error', async (t) => {
  const { dir, base, file } = await makeOverlay(t);
  await t.rejects(commitOverlay(join(dir, 'nope.cow'), { base, output: join(dir, 'n.img') }), /cannot open overlay .*nope\.cow/);
  await t.rejects(commitOverlay(file, { base: join(dir, 'nope.img'), output: join(dir, 'n.img') }), /cannot open base image/);
});
