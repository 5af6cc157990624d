// ExportBacking on real files: a small base image and an overlay directory. Throwaway overlays
// (`eph-<pid>-<n>.cow`, made at the first write, deleted at close), the read-only view, shared
// named overlays kept after close, the count of open devices, and the base's lifetime: retire()
// closes it once the last device is closed, close() at once and only once.

import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import type { BlockDevice } from '../../lib/block/device.js';
import { type BackingOptions, ExportBacking } from '../../lib/server/export-backing.js';
import { NO_EVENTS } from '../../lib/server/server-events.js';
import { writeBaseFile } from '../helpers/bases.js';
import { fdsOn } from '../helpers/files.js';
import { within } from '../helpers/wait.js';

const SIZE = 64 * 1024;
const BLOCK = 4096;
const W = { fua: false };

interface Fixture {
  readonly backing: ExportBacking;
  readonly base: { path: string; bytes: Buffer };
  readonly overlayDir: string;
  readonly warnings: string[];
  /** How many times the base image's close() was called. */
  baseCloses(): number;
}

async function open(t: Test, options: Partial<BackingOptions> = {}): Promise<Fixture> {
  const dir = t.testdir({ overlays: {} });
  const base = writeBaseFile(dir, SIZE);
  const overlayDir = join(dir, 'overlays');
  const warnings: string[] = [];
  let n = 0;
  const backing = await ExportBacking.open({
    exportName: 'golden',
    basePath: base.path,
    layers: [],
    blockSize: BLOCK,
    readOnly: false,
    overlayDir,
    space: undefined,
    elideBaseMatches: false,
    events: NO_EVENTS,
    warn: (message) => warnings.push(message),
    nextOverlayNumber: () => ++n,
    ...options,
  });
  // Spy on the base's close, keeping what it does.
  let closes = 0;
  const close = backing.base.close.bind(backing.base);
  backing.base.close = () => {
    closes++;
    return close();
  };
  t.teardown(() => backing.close());
  return { backing, base, overlayDir, warnings, baseCloses: () => closes };
}

async function readAt(device: BlockDevice | ExportBacking['base'], offset: number, length: number): Promise<Buffer> {
  const buf = Buffer.alloc(length);
  await device.read(offset, buf);
  return buf;
}

t.test('openPlain: a writable overlay whose file appears at the first write and goes at close', async (t) => {
  const f = await open(t);
  const device = await f.backing.openPlain();
  t.equal(device.writable, true);
  t.equal(device.size, SIZE);
  const file = join(f.overlayDir, `eph-${process.pid}-1.cow`);
  t.same(await readAt(device, 0, 8192), f.base.bytes.subarray(0, 8192), 'reads the base before any write');
  t.notOk(existsSync(file), 'no overlay file before the first write');
  await device.write(BLOCK, Buffer.alloc(BLOCK, 0xab), W);
  t.ok(existsSync(file), `${file} appears at the first write`);
  t.same(await readAt(device, BLOCK, BLOCK), Buffer.alloc(BLOCK, 0xab), 'the write is read back');
  t.same(await readAt(f.backing.base, BLOCK, BLOCK), f.base.bytes.subarray(BLOCK, 2 * BLOCK), 'the base is not written');
  await device.close();
  t.notOk(existsSync(file), 'the overlay file is deleted at close');
  t.strictSame(readdirSync(f.overlayDir), [], 'nothing left in the overlay directory');
  t.equal(f.baseCloses(), 0, 'closing the device keeps the base open');
  t.same(await readAt(f.backing.base, 0, 16), f.base.bytes.subarray(0, 16), 'the base still reads');
});

t.test('openPlain: each connection has its own overlay, numbered by nextOverlayNumber', async (t) => {
  const f = await open(t);
  const a = await f.backing.openPlain();
  const b = await f.backing.openPlain();
  await a.write(0, Buffer.alloc(BLOCK, 0x11), W);
  await b.write(0, Buffer.alloc(BLOCK, 0x22), W);
  t.strictSame(readdirSync(f.overlayDir).sort(), [`eph-${process.pid}-1.cow`, `eph-${process.pid}-2.cow`]);
  t.same(await readAt(a, 0, BLOCK), Buffer.alloc(BLOCK, 0x11), 'a sees its own write');
  t.same(await readAt(b, 0, BLOCK), Buffer.alloc(BLOCK, 0x22), 'b sees its own write');
  await a.close();
  t.strictSame(readdirSync(f.overlayDir), [`eph-${process.pid}-2.cow`], "closing a deletes a's file only");
  await b.close();
  t.strictSame(readdirSync(f.overlayDir), []);
});

t.test('a read-only backing gives a read-only view of the base, and no overlay', async (t) => {
  const dir = t.testdir();
  const f = await open(t, { readOnly: true, overlayDir: join(dir, 'never-made') });
  const device = await f.backing.openPlain();
  t.equal(device.writable, false);
  t.equal(device.size, SIZE);
  t.same(await readAt(device, 100, 5000), f.base.bytes.subarray(100, 5100), 'reads the base');
  await t.rejects(device.write(0, Buffer.alloc(BLOCK), W), { code: 'EPERM' }, 'a write is refused');
  await t.rejects(device.zero(0, BLOCK, { fua: false, noHole: false }), { code: 'EPERM' }, 'so is a zero');
  await t.rejects(device.trim(0, BLOCK, W), { code: 'EPERM' }, 'and a trim');
  t.strictSame(await device.extents(0, SIZE, 16), [{ length: SIZE, state: 'base', depth: 1 }], 'the base file itself: depth 1');
  await device.flush();
  t.equal(f.backing.openDevices, 1);
  await device.close();
  t.equal(f.backing.openDevices, 0);
  t.equal(f.baseCloses(), 0, 'closing the view keeps the shared base open');
  t.same(await readAt(f.backing.base, 0, 16), f.base.bytes.subarray(0, 16));
  t.notOk(existsSync(join(dir, 'never-made')), 'no overlay directory is made');
});

t.test('openNamed: one shared overlay per name, kept after close and found again', async (t) => {
  const f = await open(t);
  const file = join(f.overlayDir, 'named-golden@alice.cow');
  const a = await f.backing.openNamed('alice');
  const b = await f.backing.openNamed('alice');
  t.equal(a.writable, true);
  await a.write(0, Buffer.alloc(BLOCK, 0x5a), W);
  t.same(await readAt(b, 0, BLOCK), Buffer.alloc(BLOCK, 0x5a), 'a write on one handle is seen on the other');
  t.ok(existsSync(file), 'the named overlay file exists');
  const other = await f.backing.openNamed('bob');
  t.same(await readAt(other, 0, BLOCK), f.base.bytes.subarray(0, BLOCK), 'another name is another overlay');
  await other.close();
  await a.close();
  await b.close();
  t.ok(existsSync(file), 'kept after its last handle closed');
  t.notOk(existsSync(`${file}.lock`), 'its lock is released');
  t.equal(f.baseCloses(), 0, 'the base stays open');
  const again = await f.backing.openNamed('alice');
  t.same(await readAt(again, 0, BLOCK), Buffer.alloc(BLOCK, 0x5a), 'attached again, it has the data');
  await again.close();
});

t.test('openDevices counts every device until its close, each close once', async (t) => {
  const f = await open(t);
  t.equal(f.backing.openDevices, 0);
  const plain = await f.backing.openPlain();
  const named1 = await f.backing.openNamed('alice');
  const named2 = await f.backing.openNamed('alice');
  t.equal(f.backing.openDevices, 3, 'a throwaway overlay and two handles on one named overlay');
  await named1.close();
  t.equal(f.backing.openDevices, 2);
  await named1.close();
  t.equal(f.backing.openDevices, 2, 'closing a device twice counts once');
  await plain.close();
  await named2.close();
  t.equal(f.backing.openDevices, 0);
});

t.test('a named overlay that cannot be attached is not counted', async (t) => {
  const f = await open(t);
  await t.rejects(f.backing.openNamed('../x'), RangeError);
  t.equal(f.backing.openDevices, 0);
  t.equal(f.warnings.length, 1, 'the refusal is reported through warn');
});

t.test('retire() with devices open keeps the base until the last device closes, then closes it', async (t) => {
  const f = await open(t);
  const plain = await f.backing.openPlain();
  const named = await f.backing.openNamed('alice');
  await named.write(0, Buffer.alloc(BLOCK, 0x77), W);
  await plain.write(0, Buffer.alloc(BLOCK, 0x66), W);
  t.equal(fdsOn(f.base.path), 1, 'the base is open once');
  let retired = false;
  const retiring = f.backing.retire().then(() => {
    retired = true;
  });
  await new Promise((resolve) => setImmediate(resolve));
  t.notOk(retired, 'retire() resolves only once the backing is closed');
  t.equal(f.baseCloses(), 0, 'retire() leaves the base open while devices are open');
  t.same(await readAt(plain, BLOCK, BLOCK), f.base.bytes.subarray(BLOCK, 2 * BLOCK), 'the devices go on reading the base');
  t.same(await readAt(named, 0, BLOCK), Buffer.alloc(BLOCK, 0x77), 'and their overlays');
  await plain.close();
  t.equal(f.baseCloses(), 0, 'one device still open');
  t.same(await readAt(named, BLOCK, BLOCK), f.base.bytes.subarray(BLOCK, 2 * BLOCK));
  await named.close();
  await within(retiring, 5000, 'retire() to resolve');
  t.equal(f.backing.openDevices, 0);
  t.equal(f.baseCloses(), 1, 'the last close closed the base');
  await t.rejects(readAt(f.backing.base, 0, 16), { code: 'ESHUTDOWN' }, 'the base reads no more');
  t.equal(fdsOn(f.base.path), 0, 'no descriptor is left on the base');
  t.ok(existsSync(join(f.overlayDir, 'named-golden@alice.cow')), 'the named overlay is kept');
  t.notOk(existsSync(join(f.overlayDir, 'named-golden@alice.cow.lock')), 'and unlocked');
  t.strictSame(
    readdirSync(f.overlayDir).filter((name) => name.startsWith('eph-')),
    [],
    'the throwaway overlay is gone',
  );
});

t.test('retire() with no device open closes at once', async (t) => {
  const f = await open(t);
  const device = await f.backing.openPlain();
  await device.close();
  await f.backing.retire();
  t.equal(f.baseCloses(), 1);
  await t.rejects(readAt(f.backing.base, 0, 16), { code: 'ESHUTDOWN' });
  t.equal(fdsOn(f.base.path), 0);
});

t.test('close() is idempotent: one close of the base, whatever is still attached', async (t) => {
  const f = await open(t);
  const named = await f.backing.openNamed('alice');
  await named.write(0, Buffer.alloc(BLOCK, 0x42), W);
  const first = f.backing.close();
  t.equal(f.backing.close(), first, 'a second close() gets the same promise');
  await within(first, 5000, 'close()');
  await within(f.backing.close(), 5000, 'close() again');
  t.equal(f.baseCloses(), 1, 'the base was closed once');
  await t.rejects(readAt(f.backing.base, 0, 16), { code: 'ESHUTDOWN' });
  t.notOk(existsSync(join(f.overlayDir, 'named-golden@alice.cow.lock')), 'the named overlay still attached was closed');
  t.ok(existsSync(join(f.overlayDir, 'named-golden@alice.cow')), 'and kept');
  await named.close();
  t.equal(f.baseCloses(), 1, 'closing the handle afterwards closes nothing again');
  await f.backing.retire();
  t.equal(f.baseCloses(), 1, 'nor does a retire() after close()');
});

// A retire() that comes while a named overlay is being attached (a GO that looked the export up
// before a reload swapped the table) must wait for that device: it is counted from the start.
t.test('retire() while a named overlay is still being attached waits for that device', async (t) => {
  const f = await open(t);
  const attaching = f.backing.openNamed('alice');
  const retiring = f.backing.retire();
  const device = await within(attaching, 5000, 'openNamed');
  t.equal(f.backing.openDevices, 1, 'the attached device is counted');
  t.equal(f.baseCloses(), 0, 'the base is still open for the device being attached');
  const read = await readAt(device, 0, 16).catch((err: Error) => err.message);
  t.same(read, f.base.bytes.subarray(0, 16), 'the device reads');
  await device.close().catch(() => undefined);
  t.equal(f.backing.openDevices, 0, 'and uncounted at its close');
  await within(retiring, 5000, 'retire() to resolve');
  t.equal(f.baseCloses(), 1, 'the base is closed (once) after that device is');
});
