// Model-based test of a kept (named) overlay: random sequences of write, zero (with and without
// noHole), trim, flush, FUA writes, clean reopen and crash-and-reopen against an in-memory model.
// After a clean reopen the device must equal the model exactly. A crash (the descriptor dropped
// without the orderly close) may lose unflushed changes, but every block must hold a value it
// had since it was last made durable, and `overlay check` must call the file consistent but not
// closed cleanly.

import { join } from 'node:path';
import t from 'tap';
import { type BaseImage, openBase } from '../../lib/block/base-image.js';
import { CowDevice } from '../../lib/block/cow-device.js';
import { checkOverlay } from '../../lib/block/overlay-check.js';
import { OverlayFile } from '../../lib/block/overlay-file.js';
import { makeBase, patternBytes, randomInt, seededRandom, sha256File } from './helpers.js';

const SIZE = 256 * 1024 + 1000;

interface Open {
  dev: CowDevice;
  file: OverlayFile;
}

async function open(base: BaseImage, path: string, blockSize: number, fresh: boolean): Promise<Open> {
  const file = fresh
    ? await OverlayFile.create(path, { blockSize, size: base.size, baseIdentity: base.identity, atomic: true })
    : await OverlayFile.open(path, base.identity);
  return { file, dev: new CowDevice({ base, blockSize, overlayPath: path, overlay: file, keep: true }) };
}

for (const [seed, blockSize] of [
  [1, 4096],
  [2, 4096],
  [3, 512],
  [4, 65536],
  [5, 4096],
] as const) {
  t.test(`seed ${seed}, block size ${blockSize}`, async (t) => {
    const dir = t.testdir();
    const { path: basePath, bytes } = makeBase(dir, SIZE, seed);
    const baseSha = sha256File(basePath);
    const base = await openBase(basePath);
    t.teardown(() => base.close());
    const path = join(dir, 'named-golden@m.cow');
    const rand = seededRandom(seed);
    const blocks = Math.ceil(SIZE / blockSize);
    const span = (b: number): [number, number] => [b * blockSize, Math.min(SIZE, (b + 1) * blockSize)];
    const model = Buffer.from(bytes);
    const key = (b: number): string => model.subarray(...span(b)).toString('base64');
    let allowed: Set<string>[] = [];
    const settle = (): void => {
      allowed = Array.from({ length: blocks }, (_, b) => new Set([key(b)]));
    };
    settle();
    let cur = await open(base, path, blockSize, true);
    let crashes = 0;
    let reopens = 0;

    const verify = async (exact: boolean, what: string): Promise<boolean> => {
      const got = Buffer.alloc(SIZE);
      await cur.dev.read(0, got);
      for (let b = 0; b < blocks; b++) {
        const value = got.subarray(...span(b)).toString('base64');
        const ok = exact ? value === key(b) : (allowed[b] as Set<string>).has(value);
        if (!ok) {
          t.fail(`${what}: block ${b} ${exact ? 'differs from the model' : 'holds a value it never had since its last flush'}`);
          return false;
        }
      }
      if (!exact) got.copy(model); // what survived is the new truth
      settle();
      return true;
    };

    for (let step = 0; step < 300; step++) {
      const roll = rand();
      const offset = rand() < 0.5 ? randomInt(rand, blocks) * blockSize : randomInt(rand, SIZE);
      const length = Math.min(SIZE - offset, 1 + randomInt(rand, 3 * blockSize));
      const [first, last] = [Math.floor(offset / blockSize), Math.floor((offset + length - 1) / blockSize)];
      const touched = (durable: boolean): void => {
        for (let b = first; b <= last; b++) {
          if (durable) allowed[b] = new Set([key(b)]);
          else (allowed[b] as Set<string>).add(key(b));
        }
      };
      if (roll < 0.4) {
        const data = patternBytes(length, seed * 1000 + step);
        const fua = rand() < 0.1;
        await cur.dev.write(offset, data, { fua });
        data.copy(model, offset);
        touched(fua);
      } else if (roll < 0.55) {
        const noHole = rand() < 0.3;
        await cur.dev.zero(offset, length, { fua: false, noHole });
        model.fill(0, offset, offset + length);
        touched(false);
      } else if (roll < 0.68) {
        await cur.dev.trim(offset, length, { fua: false });
        model.fill(0, offset, offset + length);
        touched(false);
      } else if (roll < 0.82) {
        await cur.dev.flush();
        settle();
      } else if (roll < 0.91) {
        await cur.dev.close();
        cur = await open(base, path, blockSize, false);
        reopens++;
        t.equal(cur.file.wasDirty, false, 'a clean close leaves the overlay clean');
        if (!(await verify(true, `step ${step}, clean reopen`))) return;
      } else {
        await cur.file.close(); // the process dies: no flush, no header update
        const check = await checkOverlay(path, { base: basePath });
        if (check.status !== 'not-clean' && check.status !== 'clean')
          t.fail(`step ${step}: check after a crash: ${check.lines.join('; ')}`);
        cur = await open(base, path, blockSize, false);
        crashes++;
        if (!(await verify(false, `step ${step}, reopen after a crash`))) return;
      }
    }
    await cur.dev.close();
    cur = await open(base, path, blockSize, false);
    t.ok(await verify(true, 'final clean reopen'), `the device equals the model (${reopens} clean reopens, ${crashes} crashes)`);
    await cur.dev.close();
    t.equal(sha256File(basePath), baseSha, 'the base is untouched');
  });
}
