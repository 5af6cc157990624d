// `overlay check` on a clean, a crashed and a corrupted overlay: corruption is reported as an
// error (never a crash, never repaired into silent wrong data); a crashed overlay is consistent
// and --repair makes it clean.

import { readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { openBase } from '../../lib/block/base-image.js';
import { CowDevice } from '../../lib/block/cow-device.js';
import { checkOverlay } from '../../lib/block/overlay-check.js';
import { OverlayFile } from '../../lib/block/overlay-file.js';
import { makeBase } from './helpers.js';

const SIZE = 1024 * 1024;

/** A kept overlay with flushed data in blocks 0-1 and a zeroed block 5; `crash` leaves it dirty. */
async function makeOverlay(t: Test, crash: boolean): Promise<{ dir: string; base: string; file: string }> {
  const dir = t.testdir();
  const { path } = makeBase(dir, SIZE);
  const base = await openBase(path);
  const file = join(dir, 'named-golden@c.cow');
  const overlay = await OverlayFile.create(file, { blockSize: 4096, size: SIZE, baseIdentity: base.identity, atomic: true });
  const dev = new CowDevice({ base, blockSize: 4096, overlayPath: file, overlay, keep: true });
  await dev.write(0, Buffer.alloc(8192, 1), { fua: false });
  await dev.trim(5 * 4096, 4096, { fua: false });
  await dev.flush();
  if (crash) await overlay.close();
  else await dev.close();
  await base.close();
  return { dir, base: path, file };
}

t.test('clean', async (t) => {
  const { base, file } = await makeOverlay(t, false);
  const r = await checkOverlay(file, { base });
  t.equal(r.status, 'clean');
  t.equal(r.exitCode, 0);
  t.match(
    r.lines.join('\n'),
    /header: ok.*\nbase: ok.*\nmap: ok \(2 blocks in the overlay = 0.0 MiB, 1 zeroed, 253 from the base\)\nstate: clean/,
  );
});

t.test('crashed: consistent, not clean; --repair clears the flag; then clean', async (t) => {
  const { base, file } = await makeOverlay(t, true);
  const r = await checkOverlay(file, { base });
  t.equal(r.status, 'not-clean');
  t.equal(r.exitCode, 2);
  t.match(r.lines.join('\n'), /not closed cleanly.*\n.*--repair/);
  const before = readFileSync(file);
  const repaired = await checkOverlay(file, { base, repair: true });
  t.equal(repaired.status, 'repaired');
  t.equal(repaired.exitCode, 1);
  t.match(repaired.lines.at(-1), /cleared the dirty flag/);
  const after = readFileSync(file);
  t.same(after.subarray(4096), before.subarray(4096), 'only the header changed');
  t.equal((await checkOverlay(file, { base })).status, 'clean');
});

t.test('in use by a live server: reported, --repair refused', async (t) => {
  const { base, file } = await makeOverlay(t, true);
  writeFileSync(`${file}.lock`, '1\n');
  const r = await checkOverlay(file, { base });
  t.equal(r.exitCode, 2);
  t.match(r.lines.join('\n'), /in use by process 1/);
  const repair = await checkOverlay(file, { base, repair: true });
  t.equal(repair.exitCode, 2);
  t.match(repair.lines[0], /in use by process 1: stop that server/);
});

t.test('corrupted: each damage is an error naming it, and --repair refuses it', async (t) => {
  const cases: Array<[string, (file: string) => void, RegExp]> = [
    ['bad checksum', (f) => poke(f, 30, 0xff), /checksum mismatch/],
    ['bad magic', (f) => poke(f, 0, 0x00), /bad magic/],
    ['map state 3', (f) => poke(f, 4096 + 10, 0xff), /invalid state for block 40/],
    ['bits past the last block', (f) => poke(f, 4096 + 100, 0x01), /bits set past the last block/],
    [
      'data past the end of the file',
      (f) => {
        poke(f, 4096 + 60, 0x01); // block 240 says "data"
        truncateSync(f, 8192 + 100 * 4096);
      },
      /block 240 holds data, but the file ends/,
    ],
    ['truncated', (f) => truncateSync(f, 200), /shorter than its header and map/],
    ['empty', (f) => truncateSync(f, 0), /file is 0 bytes, too short for an overlay header/],
  ];
  for (const [what, damage, message] of cases) {
    const { base, file } = await makeOverlay(t, true);
    damage(file);
    const before = readFileSync(file);
    const r = await checkOverlay(file, { base });
    t.equal(r.status, 'corrupt', `${what}: corrupt`);
    t.equal(r.exitCode, 4);
    t.match(r.lines.at(-1), message, `${what}: ${r.lines.at(-1)}`);
    const repair = await checkOverlay(file, { base, repair: true });
    t.equal(repair.status, 'corrupt', `${what}: --repair refuses`);
    t.same(readFileSync(file), before, `${what}: nothing changed on disk`);
  }
});

t.test('another base, a missing file, a missing base', async (t) => {
  const { dir, base, file } = await makeOverlay(t, false);
  const other = makeBase(dir, SIZE, 7, 'other.img');
  const r = await checkOverlay(file, { base: other.path });
  t.equal(r.exitCode, 4);
  t.match(r.lines.at(-1), /belongs to another base image: made for \(size 1048576, .*\), the base is \(size 1048576, /);
  t.match(r.lines.at(-1), /^WRONG BASE: .*\(an overlay made on frozen layers is checked with them: --layer LAYER/);
  t.notOk(
    r.lines.some((l) => l.startsWith('CORRUPT')),
    'a sound overlay of another base is not called corrupt',
  );
  t.equal((await checkOverlay(join(dir, 'nope.cow'), { base })).exitCode, 8);
  t.equal((await checkOverlay(file, { base: join(dir, 'nope.img') })).exitCode, 8);
});

function poke(file: string, offset: number, byte: number): void {
  const buf = readFileSync(file);
  buf[offset] = byte;
  writeFileSync(file, buf);
}
