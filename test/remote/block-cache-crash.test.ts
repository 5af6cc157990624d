// The block cache's crash safety rests on the order of its writes and flushes, so this test
// watches them all (DataFile's write and sync, wrapped) and keeps, per slot, what a crash could
// leave on disk: what the last flush of that file made durable, or any write since (a killed
// process leaves every write in the page cache; a lost power supply keeps any of them, or none).
// After every write and flush of a busy cache (concurrent stores, evictions, checkpoints,
// restarts), no entry the map could hold may name a block the data file might not hold.

import { join } from 'node:path';
import { crc32 } from 'node:zlib';
import t from 'tap';
import { DataFile } from '../../lib/block/data-file.js';
import { BlockCache, type BlockCacheOptions, ENTRY_BYTES, MAP_HEADER_BYTES } from '../../lib/remote/block-cache.js';

const BS = 4096;
const BLOCKS = 48;
const IMAGE = BS * (BLOCKS - 1) + 1000;
const SLOTS = 8;

function blockData(block: number): Buffer {
  return Buffer.alloc(Math.min(BS, IMAGE - block * BS), (block * 7 + 1) & 0xff);
}

/** One write not known to be durable: its bytes, and when it completed (undefined: not yet). */
interface Written {
  readonly value: Buffer;
  done: number | undefined;
}

/** A slot's data or its map entry, on a disk that may lose what was not flushed. */
interface Unit {
  durable: Buffer | undefined;
  since: Written[];
}

class CrashModel {
  readonly #units = new Map<string, Unit>();
  #clock = 0;
  readonly violations: string[] = [];
  readonly counts = { entries: 0, emptied: 0, dataSyncs: 0, mapSyncs: 0 };

  /** The writes `buf` at `position` in `path` makes, one per unit. */
  issue(path: string, buf: Buffer, position: number): Written[] {
    const isMap = path.endsWith('.map');
    const size = isMap ? ENTRY_BYTES : BS;
    const base = isMap ? MAP_HEADER_BYTES : 0;
    if (isMap && position < MAP_HEADER_BYTES) return []; // the header, written once with a flush
    if ((position - base) % size !== 0) this.violations.push(`${path}: a write at ${position} is not on a unit`);
    const writes: Written[] = [];
    for (let at = 0; at < buf.length; at += size) {
      const unit = this.#unit(`${path}#${(position - base + at) / size}`);
      const value = Buffer.from(buf.subarray(at, at + size));
      if (isMap) {
        if (value.some((b) => b !== 0)) this.counts.entries++;
        else if (this.#possible(unit).some((v) => v.some((b) => b !== 0))) this.counts.emptied++;
      }
      const written = { value, done: undefined };
      unit.since.push(written);
      writes.push(written);
    }
    return writes;
  }

  completed(writes: Written[]): void {
    const now = ++this.#clock;
    for (const w of writes) w.done = now;
  }

  /** A flush of `path` began: returns what to call when it has ended. */
  flushing(path: string): () => void {
    const began = ++this.#clock;
    return () => {
      if (path.endsWith('.map')) this.counts.mapSyncs++;
      else this.counts.dataSyncs++;
      for (const [key, unit] of this.#units) {
        if (!key.startsWith(`${path}#`)) continue;
        const flushed = unit.since.filter((w) => w.done !== undefined && w.done < began);
        if (flushed.length === 0) continue;
        unit.durable = flushed.reduce((a, b) => ((a.done as number) > (b.done as number) ? a : b)).value;
        unit.since = unit.since.filter((w) => !flushed.includes(w));
      }
    };
  }

  /** Every slot: each entry the map could hold names a block whose bytes are all the data could be. */
  check(dir: string, when: string): void {
    for (let slot = 0; slot < SLOTS; slot++) {
      const entries = this.#possible(this.#unit(`${join(dir, 'img.map')}#${slot}`));
      const data = this.#possible(this.#unit(`${join(dir, 'img.data')}#${slot}`));
      for (const entry of entries) {
        const block = Number(entry.readBigUInt64BE(0)) - 1;
        if (block < 0 || crc32(entry.subarray(0, 16)) !== entry.readUInt32BE(16)) continue;
        const want = blockData(block);
        for (const bytes of data) {
          if (!bytes.subarray(0, want.length).equals(want)) {
            this.violations.push(`${when}: slot ${slot}'s entry may name block ${block} while its data may be another's`);
          }
        }
      }
    }
  }

  #possible(unit: Unit): Buffer[] {
    return [unit.durable ?? Buffer.alloc(ENTRY_BYTES), ...unit.since.map((w) => w.value)];
  }

  #unit(key: string): Unit {
    let unit = this.#units.get(key);
    if (unit === undefined) {
      unit = { durable: undefined, since: [] };
      this.#units.set(key, unit);
    }
    return unit;
  }
}

/** A small generator of the same numbers every run. */
function numbers(seed: number): (below: number) => number {
  let state = seed;
  return (below) => {
    state = (state * 1103515245 + 12345) & 0x7fffffff;
    return state % below;
  };
}

t.test('at every write and flush, no entry a crash could leave names data a crash could lose', async (t) => {
  const dir = t.testdir();
  const model = new CrashModel();
  let step = 'open';
  const realWrite = DataFile.prototype.write;
  const realSync = DataFile.prototype.sync;
  DataFile.prototype.write = function (this: DataFile, buf: Buffer, position: number): Promise<void> {
    const writes = model.issue(this.path, buf, position);
    model.check(dir, `${step}, writing ${this.path} at ${position}`);
    return realWrite.call(this, buf, position).then(() => model.completed(writes));
  };
  DataFile.prototype.sync = function (this: DataFile): Promise<void> {
    const ended = model.flushing(this.path);
    // A flush takes a while, as on a busy disk: stores and evictions go on meanwhile.
    const slowly = new Promise((resolve) => setTimeout(resolve, 3));
    return slowly
      .then(() => realSync.call(this))
      .then(() => {
        ended();
        model.check(dir, `${step}, after a flush of ${this.path}`);
      });
  };
  t.teardown(() => {
    DataFile.prototype.write = realWrite;
    DataFile.prototype.sync = realSync;
  });

  const options: BlockCacheOptions = {
    dir,
    stem: 'img',
    identity: { size: IMAGE, fingerprint: 'c'.repeat(64) },
    blockSize: BS,
    capacity: SLOTS * BS,
    warn: (message) => t.fail(message),
    checkpointBytes: 3 * BS,
  };
  const next = numbers(14);
  let cache = await BlockCache.open(options);
  let wrongReads = 0;
  for (let round = 0; round < 300; round++) {
    step = `round ${round}`;
    // A few fetches land at once, as from concurrent clients.
    const stores: Array<Promise<void>> = [];
    for (let i = 0, n = 1 + next(2); i < n; i++) {
      const first = next(BLOCKS);
      const count = Math.min(1 + next(3), BLOCKS - first);
      const blocks = Array.from({ length: count }, (_, j) => blockData(first + j));
      stores.push(cache.store(first, Buffer.concat(blocks)));
    }
    const reads = Array.from({ length: 3 }, async () => {
      const block = next(BLOCKS);
      const dest = Buffer.alloc(blockData(block).length);
      const reading = cache.read(block, 0, dest);
      if (reading === undefined) return;
      await reading;
      if (!dest.equals(blockData(block))) wrongReads++;
    });
    await Promise.all([...stores, ...reads]);
    if (next(2) === 0) await new Promise((resolve) => setTimeout(resolve, 2)); // a checkpoint may end
    if (round % 100 === 99) {
      step = `close in round ${round}`;
      await cache.close();
      step = `open in round ${round}`;
      cache = await BlockCache.open(options);
    }
  }
  await cache.close();
  t.same(model.violations.slice(0, 5), [], 'no moment where a crash could leave a wrong block named');
  t.equal(wrongReads, 0, 'every read gave the bytes of its block');
  t.ok(model.counts.entries > 50, `entries written (${model.counts.entries})`);
  t.ok(model.counts.emptied > 30, `entries emptied before their slot was reused (${model.counts.emptied})`);
  t.ok(model.counts.dataSyncs > 10, `checkpoints (${model.counts.dataSyncs} flushes of the data)`);
  t.ok(model.counts.mapSyncs > 10, `evictions made durable (${model.counts.mapSyncs} flushes of the map)`);
});
