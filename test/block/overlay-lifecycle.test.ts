// `overlay create | discard | freeze`: create makes a clean, empty overlay (all base) for a base
// and its layers, published whole; discard removes only an nbd-cow overlay, a frozen one only
// with force; freeze sets the flag and a random layer id and takes the write bits off, once.
// Each takes the overlay's lock and refuses, changing nothing, while a live process holds it.
// A frozen overlay is never opened for writing again.

import { type ChildProcess, spawn } from 'node:child_process';
import { chmodSync, existsSync, lstatSync, readdirSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { type BaseIdentity, openBase } from '../../lib/block/base-image.js';
import { CowDevice } from '../../lib/block/cow-device.js';
import { layerIdentity } from '../../lib/block/layer-identity.js';
import { openImageStack } from '../../lib/block/layer-stack.js';
import { OverlayFile } from '../../lib/block/overlay-file.js';
import { inspectOverlay, overlayInfo } from '../../lib/block/overlay-inspect.js';
import { createOverlay, discardOverlay, freezeOverlay } from '../../lib/block/overlay-lifecycle.js';
import { acquireOverlayLock } from '../../lib/block/overlay-lock.js';
import { fdsOn } from '../helpers/files.js';
import { deadPid, pidOf } from '../helpers/processes.js';
import { makeBase } from './helpers.js';

const BS = 4096;
/** 32 blocks and 100 bytes. */
const SIZE = 32 * BS + 100;

async function identityOf(path: string): Promise<BaseIdentity> {
  const image = await openBase(path);
  await image.close();
  return image.identity;
}

/** A directory with a base image; `file(name)` is a path in it. */
function setup(t: Test): { dir: string; base: string; file: (name: string) => string } {
  const dir = t.testdir();
  const { path } = makeBase(dir, SIZE);
  return { dir, base: path, file: (name) => join(dir, name) };
}

/** A live process other than this one (killed at the end of the test). */
function liveProcess(t: Test): number {
  const child: ChildProcess = spawn(process.execPath, ['-e', 'setTimeout(() => {}, 120000)'], { stdio: 'ignore' });
  t.teardown(() => {
    child.kill();
  });
  return pidOf(child);
}

/** Names in `dir` ending in .lock or .new: what an operation must not leave behind. */
function leftovers(dir: string): string[] {
  return readdirSync(dir).filter((name) => name.endsWith('.lock') || name.endsWith('.new'));
}

/** A kept overlay on `base` with data in block 1, closed cleanly (or not, with `crash`). */
async function writtenOverlay(base: string, path: string, crash = false): Promise<void> {
  const image = await openBase(base);
  if (crash) {
    const overlay = await OverlayFile.create(path, { blockSize: BS, size: image.size, baseIdentity: image.identity });
    await overlay.writeData(BS, Buffer.alloc(BS, 7));
    overlay.map.set(1, 1);
    await overlay.flush();
    await overlay.close(); // still flagged dirty
  } else {
    const dev = new CowDevice({ base: image, blockSize: BS, overlayPath: path, keep: true });
    await dev.write(BS, Buffer.alloc(BS, 7), { fua: false });
    await dev.close();
  }
  await image.close();
}

t.test('create: a clean, empty overlay on the base, all base, nothing left behind', async (t) => {
  const s = setup(t);
  const path = s.file('a.cow');
  const identity = await identityOf(s.base);
  t.strictSame(await createOverlay(path, { base: s.base, blockSize: BS }), identity, 'returns what it is made on');
  const inspected = await inspectOverlay(path);
  t.match(inspected.header, {
    blockSize: BS,
    virtualSize: SIZE,
    baseSize: identity.size,
    baseFingerprint: identity.fingerprint,
    dirty: false,
    frozen: false,
  });
  const info = overlayInfo(inspected);
  t.match(info, { blocks: 33, fromBase: { blocks: 33, bytes: SIZE }, data: { blocks: 0 }, zero: { blocks: 0 } });
  t.equal(statSync(path).mode & 0o777, 0o600, 'mode 0600');
  t.strictSame(leftovers(s.dir), [], 'no lock file, no temporary file');
  t.equal(fdsOn(s.base), 0, 'the base is closed');
  t.equal(fdsOn(path), 0, 'the overlay is closed');
  const opened = await OverlayFile.open(path, identity);
  t.equal(opened.wasDirty, false, 'opens as clean');
  await opened.close();

  const big = s.file('big.cow');
  await createOverlay(big, { base: s.base, blockSize: 65536 });
  t.match((await inspectOverlay(big)).header, { blockSize: 65536, virtualSize: SIZE, dirty: false });
});

t.test('create on layers records the top layer', async (t) => {
  const s = setup(t);
  const l1 = s.file('l1.cow');
  const l2 = s.file('l2.cow');
  await writtenOverlay(s.base, l1);
  const frozen1 = await freezeOverlay(l1);
  t.strictSame(
    await createOverlay(l2, { base: s.base, layers: [l1], blockSize: 512 }),
    frozen1.identity,
    'made on L1: records its identity',
  );
  t.match((await inspectOverlay(l2)).header, {
    blockSize: 512,
    baseSize: frozen1.identity.size,
    baseFingerprint: frozen1.identity.fingerprint,
    dirty: false,
  });
  const frozen2 = await freezeOverlay(l2);
  const top = s.file('top.cow');
  t.strictSame(await createOverlay(top, { base: s.base, layers: [l1, l2], blockSize: BS }), frozen2.identity);
  t.not(frozen2.identity.fingerprint, frozen1.identity.fingerprint);
  const stack = await openImageStack(s.base, [l1, l2]);
  const opened = await OverlayFile.open(top, stack.identity);
  await opened.close();
  await stack.close();
  await t.rejects(OverlayFile.open(top, await identityOf(s.base)), { code: 'EINVAL', message: /belongs to another base image/ });
  t.strictSame(leftovers(s.dir), []);
  for (const path of [s.base, l1, l2, top]) t.equal(fdsOn(path), 0, `nothing left open on ${path}`);
});

t.test('create refuses an existing file, a bad base, a bad layer, a bad block size, a held lock', async (t) => {
  const s = setup(t);
  const path = s.file('a.cow');
  await createOverlay(path, { base: s.base, blockSize: BS });
  const before = readFileSync(path);
  await t.rejects(createOverlay(path, { base: s.base, blockSize: 512 }), {
    code: 'EEXIST',
    message: `overlay ${path} already exists (discard it first)`,
  });
  t.same(readFileSync(path), before, 'the existing overlay is unchanged');

  const plain = s.file('plain.img');
  writeFileSync(plain, 'not an overlay');
  await t.rejects(createOverlay(plain, { base: s.base, blockSize: BS }), { code: 'EEXIST' }, 'any existing file');
  t.equal(readFileSync(plain, 'utf8'), 'not an overlay');

  const missing = s.file('missing.img');
  const other = s.file('b.cow');
  await t.rejects(createOverlay(other, { base: missing, blockSize: BS }), {
    code: 'ENOENT',
    message: `cannot open base image ${missing}: no such file (ENOENT)`,
  });
  await t.rejects(createOverlay(other, { base: s.base, layers: [path], blockSize: BS }), {
    code: 'EINVAL',
    message: `layer ${path} is not frozen: freeze it first (nbd-cow overlay freeze ${path})`,
  });
  await t.rejects(createOverlay(other, { base: s.base, blockSize: 3000 }), {
    code: 'EINVAL',
    message: /block size 3000 is not a power of two/,
  });
  const loop = s.file('loop.cow');
  symlinkSync('loop.cow', loop);
  await t.rejects(createOverlay(loop, { base: s.base, blockSize: BS }), { code: 'ELOOP' }, 'what stat cannot tell is passed on');
  t.ok(lstatSync(loop).isSymbolicLink(), 'the link is left alone');
  const pid = liveProcess(t);
  writeFileSync(`${other}.lock`, `${pid}\n`);
  await t.rejects(createOverlay(other, { base: s.base, blockSize: BS }), {
    code: 'EBUSY',
    message: `overlay ${other} is in use by process ${pid} (lock file ${other}.lock)`,
  });
  t.equal(readFileSync(`${other}.lock`, 'utf8'), `${pid}\n`, "the holder's lock is left alone");
  t.notOk(existsSync(other), 'nothing was created');
  t.strictSame(leftovers(s.dir), ['b.cow.lock'], 'no other lock, no temporary file');
  for (const p of [s.base, path]) t.equal(fdsOn(p), 0, `nothing left open on ${p}`);
});

t.test('discard removes an overlay, clean or dirty', async (t) => {
  const s = setup(t);
  const clean = s.file('clean.cow');
  const dirty = s.file('dirty.cow');
  await writtenOverlay(s.base, clean);
  await writtenOverlay(s.base, dirty, true);
  t.strictSame(await discardOverlay(clean), { frozen: false, dirty: false });
  t.strictSame(await discardOverlay(dirty, { force: false }), { frozen: false, dirty: true });
  t.strictSame(readdirSync(s.dir), ['base.img'], 'both gone, and their locks');
  await t.rejects(discardOverlay(clean), { code: 'ENOENT', message: `cannot open overlay ${clean}: no such file` });
  t.strictSame(leftovers(s.dir), []);
});

t.test('discard refuses what is not an overlay, and keeps it', async (t) => {
  const s = setup(t);
  const before = readFileSync(s.base);
  await t.rejects(discardOverlay(s.base), { code: 'EINVAL', message: /^overlay .*base\.img: overlay header: bad magic/ });
  t.same(readFileSync(s.base), before, 'the file is kept as it was');
  const short = s.file('short.cow');
  writeFileSync(short, 'x');
  await t.rejects(discardOverlay(short), { code: 'EINVAL', message: /too short for an overlay header/ });
  t.ok(existsSync(short));
  t.strictSame(leftovers(s.dir), []);
});

t.test('discard refuses a frozen overlay unless forced', async (t) => {
  const s = setup(t);
  const layer = s.file('layer.cow');
  await writtenOverlay(s.base, layer);
  await freezeOverlay(layer);
  const before = readFileSync(layer);
  for (const options of [undefined, {}, { force: false }]) {
    await t.rejects(discardOverlay(layer, options), {
      code: 'EPERM',
      message: `overlay ${layer} is frozen: overlays made on it as a layer read through it; --force removes it anyway`,
    });
  }
  t.same(readFileSync(layer), before, 'kept');
  t.strictSame(await discardOverlay(layer, { force: true }), { frozen: true, dirty: false });
  t.notOk(existsSync(layer), 'removed with force');
  t.strictSame(leftovers(s.dir), []);
});

t.test('discard and freeze refuse while a live process holds the lock', async (t) => {
  const s = setup(t);
  const path = s.file('busy.cow');
  await writtenOverlay(s.base, path);
  const before = readFileSync(path);
  const mode = statSync(path).mode;
  const pid = liveProcess(t);
  writeFileSync(`${path}.lock`, `${pid}\n`);
  const busy = `overlay ${path} is in use by process ${pid} (lock file ${path}.lock)`;
  await t.rejects(discardOverlay(path, { force: true }), { code: 'EBUSY', message: busy });
  await t.rejects(freezeOverlay(path), { code: 'EBUSY', message: busy });
  t.same(readFileSync(path), before, 'unchanged');
  t.equal(statSync(path).mode, mode, 'mode unchanged');
  t.equal(readFileSync(`${path}.lock`, 'utf8'), `${pid}\n`, 'the lock is left alone');

  // A server in this process holding it is refused as well.
  writeFileSync(`${path}.lock`, `${deadPid()}\n`);
  const lock = await acquireOverlayLock(`${path}.lock`, `overlay ${path}`);
  await t.rejects(freezeOverlay(path), {
    code: 'EBUSY',
    message: `overlay ${path} is in use by this process (another server in it) (lock file ${path}.lock)`,
  });
  await t.rejects(discardOverlay(path), { code: 'EBUSY' });
  await lock.release();
  t.same(readFileSync(path), before, 'still unchanged');

  // A lock left by a dead process is stale: taken over.
  writeFileSync(`${path}.lock`, `${deadPid()}\n`);
  t.strictSame(await discardOverlay(path), { frozen: false, dirty: false });
  t.strictSame(readdirSync(s.dir), ['base.img']);
});

t.test('freeze: flag, random id and no write bits; again changes nothing', async (t) => {
  const s = setup(t);
  const path = s.file('a.cow');
  await writtenOverlay(s.base, path);
  chmodSync(path, 0o664);
  const before = readFileSync(path);
  const first = await freezeOverlay(path);
  const { header } = await inspectOverlay(path);
  t.equal(first.already, false);
  t.equal(header.frozen, true, 'the header says frozen');
  t.equal(header.dirty, false);
  t.match(header.layerId, /^[0-9a-f]{32}$/, 'a layer id');
  t.not(header.layerId, '0'.repeat(32));
  t.strictSame(first.identity, layerIdentity(header), 'the identity of the frozen header');
  t.equal(statSync(path).mode & 0o777, 0o444, 'the write bits are gone, the rest kept');
  const after = readFileSync(path);
  t.equal(after.length, before.length);
  t.same(after.subarray(128), before.subarray(128), 'only the header changed');
  t.strictSame(leftovers(s.dir), []);

  const again = await freezeOverlay(path);
  t.strictSame(again, { already: true, identity: first.identity }, 'already frozen: the same identity');
  t.same(readFileSync(path), after, 'nothing changed');
  t.equal(fdsOn(path), 0, 'nothing left open');

  // The same content frozen twice is two different layers.
  const twin = s.file('twin.cow');
  writeFileSync(twin, before);
  const second = await freezeOverlay(twin);
  t.not(second.identity.fingerprint, first.identity.fingerprint, 'another id, another identity');
  t.equal(second.identity.size, first.identity.size);

  const stack = await openImageStack(s.base, [path]);
  t.strictSame(stack.identity, first.identity, 'it serves as a layer');
  const block = Buffer.alloc(BS);
  await stack.read(BS, block);
  t.same(block, Buffer.alloc(BS, 7), 'its data reads through');
  await stack.close();
});

t.test('freeze refuses a dirty overlay and what is not an overlay, changing nothing', async (t) => {
  const s = setup(t);
  const dirty = s.file('dirty.cow');
  await writtenOverlay(s.base, dirty, true);
  const before = readFileSync(dirty);
  const mode = statSync(dirty).mode;
  await t.rejects(freezeOverlay(dirty), {
    code: 'EBUSY',
    message: `overlay ${dirty} was not closed cleanly: run 'nbd-cow overlay check ${dirty} --base BASE --repair' first`,
  });
  t.same(readFileSync(dirty), before, 'unchanged');
  t.equal(statSync(dirty).mode, mode, 'mode unchanged');
  const baseBefore = readFileSync(s.base);
  await t.rejects(freezeOverlay(s.base), { code: 'EINVAL', message: /base\.img: overlay header: bad magic/ });
  t.same(readFileSync(s.base), baseBefore);
  const missing = s.file('missing.cow');
  await t.rejects(freezeOverlay(missing), { code: 'ENOENT', message: `cannot open overlay ${missing}: no such file` });
  t.notOk(existsSync(missing), 'not created');
  t.strictSame(leftovers(s.dir), []);
  for (const p of [dirty, s.base]) t.equal(fdsOn(p), 0);
});

t.test('a frozen overlay is never opened for writing', async (t) => {
  const s = setup(t);
  const path = s.file('a.cow');
  await writtenOverlay(s.base, path);
  await freezeOverlay(path);
  const before = readFileSync(path);
  const base = await openBase(s.base);
  await t.rejects(OverlayFile.open(path, base.identity), {
    code: 'EPERM',
    message: `overlay ${path} is frozen: it can only serve as a layer below others (--layer ${path})`,
  });
  await base.close();
  t.equal(fdsOn(path), 0, 'the refused file is closed');
  t.same(readFileSync(path), before, 'unchanged');
});
