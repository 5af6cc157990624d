import fs, { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { DataFile } from '../../lib/block/data-file.js';
import { InlineIoGuard } from '../../lib/block/inline-io-guard.js';
import { O_CREAT_EXCL_RDWR, O_RDONLY } from '../../lib/block/syscalls.js';

t.test('write then read round-trips at a position; sync, stat, truncate', async (t) => {
  const path = join(t.testdir(), 'f');
  const file = await DataFile.open(path, O_CREAT_EXCL_RDWR);
  t.equal(file.path, path);
  await file.write(Buffer.from('hello'), 10);
  const buf = Buffer.alloc(5);
  await file.read(buf, 10);
  t.equal(buf.toString(), 'hello');
  await file.sync();
  t.equal((await file.stat()).size, 15);
  await file.truncate(4096);
  t.equal((await file.stat()).size, 4096);
  await file.close();
  t.same(readFileSync(path).subarray(0, 10), Buffer.alloc(10), 'the gap is a hole of zeros');
});

t.test('read zero-fills past the end of the file', async (t) => {
  const path = join(t.testdir(), 'f');
  writeFileSync(path, Buffer.from('abc'));
  const file = await DataFile.open(path, O_RDONLY);
  const buf = Buffer.alloc(6, 0xff);
  await file.read(buf, 1);
  t.same(buf, Buffer.from([0x62, 0x63, 0, 0, 0, 0]));
  await file.close();
});

t.test('a large buffer is read and written whole (the threadpool path)', async (t) => {
  const file = await DataFile.open(join(t.testdir(), 'f'), O_CREAT_EXCL_RDWR);
  const data = Buffer.alloc(3 * 1024 * 1024 + 7);
  for (let i = 0; i < data.length; i++) data[i] = i % 251;
  await file.write(data, 4096);
  const back = Buffer.alloc(data.length);
  await file.read(back, 4096);
  t.ok(back.equals(data));
  await file.close();
});

t.test('failures reject: inline and in the threadpool', async (t) => {
  const file = await DataFile.open(join(t.testdir(), 'f'), O_CREAT_EXCL_RDWR);
  await t.rejects(file.write(Buffer.alloc(16), 2 ** 52), { code: /EFBIG|EINVAL/ }, 'small (inline)');
  await t.rejects(file.write(Buffer.alloc(256 * 1024), 2 ** 52), { code: /EFBIG|EINVAL/ }, 'large (queued)');
  // A fresh file for the direct inline call: `file`'s guard trips when the failing call above took
  // over 2 ms (a loaded machine: it failed CI once), and writeInline is only for after canWriteInline().
  const fresh = await DataFile.open(join(t.testdir(), 'g'), O_CREAT_EXCL_RDWR);
  t.ok(fresh.canWriteInline(4096));
  t.throws(() => fresh.writeInline(Buffer.alloc(16), 2 ** 52), { code: /EFBIG|EINVAL/ });
  await fresh.close();
  await file.close();
  await t.rejects(file.read(Buffer.alloc(16), 0), { code: 'EBADF' }, 'a closed file');
});

t.test('large writes to one file go to the kernel one at a time, in issue order', async (t) => {
  const file = await DataFile.open(join(t.testdir(), 'f'), O_CREAT_EXCL_RDWR);
  const other = await DataFile.open(join(t.testdir(), 'g'), O_CREAT_EXCL_RDWR);
  // Count write(2)/writev(2) calls in flight per descriptor by wrapping fs.write and fs.writev
  // (positional-io.ts looks them up at each call).
  const real = { write: fs.write, writev: fs.writev };
  const inFlight = new Map<number, number>();
  const most = new Map<number, number>();
  const counted =
    (call: (...a: unknown[]) => void) =>
    (...args: unknown[]) => {
      const d = args[0] as number;
      const done = args[args.length - 1] as (...r: unknown[]) => void;
      inFlight.set(d, (inFlight.get(d) ?? 0) + 1);
      most.set(d, Math.max(most.get(d) ?? 0, inFlight.get(d) ?? 0));
      args[args.length - 1] = (...r: unknown[]) => {
        inFlight.set(d, (inFlight.get(d) ?? 1) - 1);
        done(...r);
      };
      return call(...args);
    };
  const restore = (): void => {
    Object.assign(fs, real);
  };
  Object.assign(fs, {
    write: counted(real.write as (...a: unknown[]) => void),
    writev: counted(real.writev as (...a: unknown[]) => void),
  });
  t.teardown(restore);
  const size = 256 * 1024; // above the inline limit
  // Overlapping writes of different bytes: only issue order makes the last one win.
  const writes = Array.from({ length: 12 }, (_, i) => file.write(Buffer.alloc(size, i + 1), (i % 3) * 4096));
  const elsewhere = Array.from({ length: 4 }, () => other.write(Buffer.alloc(size, 1), 0));
  // A failing write in the middle (EFBIG: far past the largest file) rejects on its own...
  const failing = file.write(Buffer.alloc(size, 0xee), 2 ** 52);
  // ...and the writes queued after it still run.
  const after = file.writev([Buffer.alloc(size / 2, 0xaa), Buffer.alloc(size / 2, 0xaa)], 8192);
  await Promise.all([...writes, ...elsewhere]);
  await t.rejects(failing);
  await after;
  restore();
  t.same([...most.values()], [1, 1], 'one write in flight at a time on each descriptor');
  const back = Buffer.alloc(8192 + size);
  await file.read(back, 0);
  t.equal(back[0], 10, 'bytes only the 10th write (offset 0) reaches come from it');
  t.equal(back[4096], 11, 'then the 11th (offset 4096)');
  t.ok(back.subarray(8192).equals(Buffer.alloc(size, 0xaa)), 'the write queued after the failure ran last');
  await file.close();
  await other.close();
});

t.test('writev of a small total joins the pieces and writes them inline', async (t) => {
  const path = join(t.testdir(), 'f');
  const file = await DataFile.open(path, O_CREAT_EXCL_RDWR);
  await file.writev([Buffer.from('ab'), Buffer.from('cd')], 1);
  const small = Buffer.alloc(4);
  await file.read(small, 1);
  t.equal(small.toString(), 'abcd');
  await file.close();
});

/** A guard that counts the inline transfers it timed. */
class CountingGuard extends InlineIoGuard {
  records = 0;
  override record(start: number): void {
    this.records++;
    super.record(start);
  }
}

t.test("a reader's own guard decides inline or threadpool for its reads, not the file's", async (t) => {
  const path = join(t.testdir(), 'f');
  writeFileSync(path, Buffer.alloc(8192, 0x61));
  const file = await DataFile.open(path, O_RDONLY);
  const tripped = new CountingGuard();
  tripped.record(performance.now() - 50); // one 50 ms call: a slow disk, to the threadpool for a while
  t.notOk(tripped.allows(4096), 'the reader guard is tripped');
  const viaPool = Buffer.alloc(4096);
  // An inline read is timed by its guard (record); one in the threadpool is not. (Whether the
  // buffer is filled when read() returns says nothing: a pool thread may be that quick.)
  await file.read(viaPool, 0, tripped);
  t.equal(tripped.records, 1, 'with the tripped guard, the read went to the threadpool (not timed inline)');
  t.equal(viaPool[0], 0x61);
  const inline = Buffer.alloc(4096);
  const done = file.read(inline, 4096);
  t.equal(inline[0], 0x61, "with the file's own guard (untouched), the same read ran inline");
  await done;
  const fresh = Buffer.alloc(4096);
  const alsoInline = file.read(fresh, 0, new InlineIoGuard());
  t.equal(fresh[0], 0x61, "another reader's fresh guard reads inline too: one reader's misses cost only that reader");
  await alsoInline;
  await file.close();
});
