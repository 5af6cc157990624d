// Layered golden images with real clients: a named overlay made ahead of time (`overlay create`)
// and written by qemu-io, frozen (`overlay freeze`), a second layer written on it and frozen,
// then `serve BASE --layer L1 --layer L2` (and the same from a config file): reads fall through
// both layers to the base, nbdinfo --map=qemu:allocation-depth reports 1 for the top overlay, 2
// and 3 for the layers and 4 for the base, base:allocation and qemu-img map see the layer's
// zeros, and `overlay commit --layer` writes exactly what nbdcopy read from the live export.
// Refused, in one line: layers in the wrong order, a layer that is not frozen, a frozen overlay
// opened for writing, a discard while a client has the overlay open.

import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { guardBase, makePatternBase, sha256File } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { describeRun, run } from '../helpers/processes.js';
import { pySession } from '../helpers/py-session.js';
import { runCli, startServe, startServeConfig } from '../helpers/server-process.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const SIZE = 4 * MiB;

/** qemu-io on `uri`, each `commands` entry one -c; fails the test on a non-zero exit. */
async function qemuIo(t: Test, uri: string, commands: readonly string[]): Promise<string> {
  const r = await run('qemu-io', ['-f', 'raw', ...commands.flatMap((c) => ['-c', c]), uri]);
  t.equal(r.code, 0, describeRun(r));
  t.notMatch(r.stdout, /Pattern verification failed/, `${commands.join('; ')}: ${r.stdout}`);
  return r.stdout;
}

/** `nbdinfo --map=CONTEXT --json` as [offset, length, type] rows. */
async function nbdMap(t: Test, uri: string, context: string): Promise<Array<[number, number, number]>> {
  const r = await run('nbdinfo', [`--map=${context}`, '--json', uri]);
  t.equal(r.code, 0, describeRun(r));
  return (JSON.parse(r.stdout) as Array<{ offset: number; length: number; type: number }>).map((e) => [
    e.offset,
    e.length,
    e.type,
  ]);
}

if (requireClients(t, ['qemu-io', 'qemu-img', 'nbdinfo', 'nbdcopy'], true)) {
  t.test('two frozen layers under named overlays, through qemu-io, nbdinfo, qemu-img and nbdcopy', async (t) => {
    const dir = t.testdir();
    const overlays = join(dir, 'overlays');
    const base = await makePatternBase(dir, SIZE, 'golden.img');
    const guard = await guardBase(t, base);
    const tools = join(overlays, 'named-golden@tools.cow');
    const patch = join(overlays, 'named-golden@patch.cow');

    // Layer 1, made ahead of time and written through the server: data at [0, 128K), zeros
    // (WRITE_ZEROES that may unmap: the zero state) at [1M, 1M + 64K).
    const made = await runCli(['overlay', 'create', tools, '--base', base]);
    t.equal(made.code, 0, describeRun(made));
    t.match(made.stdout, /named-golden@tools\.cow: created, empty, for /);
    const again = await runCli(['overlay', 'create', tools, '--base', base]);
    t.equal(again.code, 1, 'create refuses an existing file');
    t.match(again.stderr, /^nbd-cow: overlay .*named-golden@tools\.cow already exists \(discard it first\)\n$/);
    let server = await startServe(t, base, ['--overlay-dir', overlays, '--overlays', 'named']);
    await qemuIo(t, `${server.uri}@tools`, ['write -P 0xa1 0 128k', 'write -z -u 1M 64k']);
    t.equal((await server.stop()).code, 0);

    const frozen = await runCli(['overlay', 'freeze', tools]);
    t.equal(frozen.code, 0, describeRun(frozen));
    t.match(frozen.stdout, /: frozen; overlays made on it record base size 4194304, fingerprint [0-9a-f]{64}\n$/);
    t.equal(statSync(tools).mode & 0o222, 0, 'freeze took the write bits off');
    const info = JSON.parse((await runCli(['overlay', 'info', '--json', tools])).stdout) as Record<string, unknown>;
    t.match(info, { frozen: true, dirty: false, blocks: { data: 32, zero: 16 } });
    t.equal(
      info['layer-fingerprint'],
      /fingerprint ([0-9a-f]{64})/.exec(frozen.stdout)?.[1],
      'info shows the same layer identity',
    );
    const twice = await runCli(['overlay', 'freeze', tools]);
    t.equal(twice.code, 0, describeRun(twice));
    t.match(twice.stdout, /: already frozen;/);

    // Layer 2 on layer 1: data at [64K, 128K) over layer 1's, and at [2M, 2M + 4K).
    server = await startServe(t, base, ['--layer', tools, '--overlay-dir', overlays, '--overlays', 'named']);
    await qemuIo(t, `${server.uri}@patch`, ['read -P 0xa1 0 128k', 'write -P 0xb2 64k 64k', 'write -P 0xb2 2M 4k']);
    const refusedGo = await run('qemu-io', ['-f', 'raw', '-c', 'read 0 4k', `${server.uri}@tools`]);
    t.not(refusedGo.code, 0, 'a frozen overlay is not opened for writing');
    t.match(refusedGo.stderr, /is frozen: it can only serve as a layer below others/);
    t.equal((await server.stop()).code, 0);
    t.equal((await runCli(['overlay', 'freeze', patch])).code, 0);
    const checked = await runCli(['overlay', 'check', patch, '--base', base, '--layer', tools]);
    t.equal(checked.code, 0, describeRun(checked));
    t.match(checked.stdout, /^state: clean, frozen \(a layer: read-only for good\)$/m);
    const unchecked = await runCli(['overlay', 'check', patch, '--base', base]);
    t.equal(unchecked.code, 4, 'check without its layer: made for another base');
    t.match(
      unchecked.stdout,
      /^WRONG BASE: overlay .* belongs to another base image: .*--layer LAYER for each, bottom first\)$/m,
    );
    t.notMatch(unchecked.stdout, /CORRUPT/, 'a layered overlay checked without its layer is not called corrupt');

    // In the wrong order, or not frozen: one line, exit 1.
    const reversed = await runCli(['serve', base, '--layer', patch, '--layer', tools, '-p', '0']);
    t.equal(reversed.code, 1);
    t.match(
      reversed.stderr,
      /^nbd-cow: layer .*named-golden@patch\.cow was made for another base or layer: made for \(size 4194304, fingerprint [0-9a-f]{16}…\), below it is .*golden\.img \(size 4194304, fingerprint [0-9a-f]{16}…\)\n$/,
    );
    const loose = join(dir, 'loose.cow');
    t.equal((await runCli(['overlay', 'create', loose, '--base', base])).code, 0);
    const notFrozen = await runCli(['serve', base, '--layer', loose, '-p', '0']);
    t.equal(notFrozen.code, 1);
    t.match(notFrozen.stderr, /^nbd-cow: layer .*loose\.cow is not frozen: freeze it first \(nbd-cow overlay freeze .*\)\n$/);

    // The stack: a named overlay on top writes [96K, 100K).
    server = await startServe(t, base, ['--layer', tools, '--layer', patch, '--overlay-dir', overlays]);
    const vm = `${server.uri}@vm1`;
    await qemuIo(t, vm, [
      'write -P 0xc3 96k 4k',
      'read -P 0xa1 0 64k',
      'read -P 0xb2 64k 32k',
      'read -P 0xc3 96k 4k',
      'read -P 0xb2 100k 28k',
      'read -P 0 1M 64k',
      'read -P 0xb2 2M 4k',
    ]);
    t.same(
      await nbdMap(t, vm, 'qemu:allocation-depth'),
      [
        [0, 64 * KiB, 3],
        [64 * KiB, 32 * KiB, 2],
        [96 * KiB, 4 * KiB, 1],
        [100 * KiB, 28 * KiB, 2],
        [128 * KiB, MiB - 128 * KiB, 4],
        [MiB, 64 * KiB, 3],
        [MiB + 64 * KiB, MiB - 64 * KiB, 4],
        [2 * MiB, 4 * KiB, 2],
        [2 * MiB + 4 * KiB, 2 * MiB - 4 * KiB, 4],
      ],
      'depth 1 = the top overlay, 2 = the last layer, 3 = the first, 4 = the base',
    );
    t.same(
      await nbdMap(t, vm, 'base:allocation'),
      [
        [0, MiB, 0],
        [MiB, 64 * KiB, 3],
        [MiB + 64 * KiB, 3 * MiB - 64 * KiB, 0],
      ],
      "the first layer's zeros are a hole that reads as zeros",
    );
    const qmap = await run('qemu-img', ['map', '--output=json', '-f', 'raw', vm]);
    t.equal(qmap.code, 0, describeRun(qmap));
    const zeros = (JSON.parse(qmap.stdout) as Array<{ start: number; length: number; zero: boolean }>).filter((e) => e.zero);
    t.same(
      zeros.map((e) => [e.start, e.length]),
      [[MiB, 64 * KiB]],
      'qemu-img map sees the same zeros',
    );
    const plain = await nbdMap(t, server.uri, 'qemu:allocation-depth');
    t.same(
      plain.slice(0, 2),
      [
        [0, 64 * KiB, 3],
        [64 * KiB, 64 * KiB, 2],
      ],
      'a throwaway overlay sits on the same stack',
    );

    // A client holds vm1: discard is refused, and changes nothing.
    const py = pySession(t);
    await py.ok({ op: 'connect', h: 'a', uri: vm });
    const vmFile = join(overlays, 'named-golden@vm1.cow');
    const busy = await runCli(['overlay', 'discard', vmFile]);
    t.equal(busy.code, 1);
    t.match(busy.stderr, new RegExp(`^nbd-cow: overlay .*named-golden@vm1\\.cow is in use by process ${server.pid} `));
    t.same(await py.pread('a', 96 * KiB, 4 * KiB), Buffer.alloc(4 * KiB, 0xc3), 'the server goes on');
    await py.ok({ op: 'close', h: 'a' });
    t.equal(await py.end(), 0);

    const live = join(dir, 'live.img');
    const copied = await run('nbdcopy', [vm, live]);
    t.equal(copied.code, 0, describeRun(copied));
    t.equal((await server.stop()).code, 0);

    const committed = join(dir, 'committed.img');
    const noLayers = await runCli(['overlay', 'commit', vmFile, '--base', base, '-o', committed, '-q']);
    t.equal(noLayers.code, 1, 'commit without the layers: the overlay belongs to another base');
    t.match(noLayers.stderr, /belongs to another base image/);
    const commit = await runCli([
      'overlay',
      'commit',
      vmFile,
      '--base',
      base,
      '--layer',
      tools,
      '--layer',
      patch,
      '-o',
      committed,
    ]);
    t.equal(commit.code, 0, describeRun(commit));
    t.ok(readFileSync(committed).equals(readFileSync(live)), 'commit output is byte-equal to nbdcopy of the live export');

    // discard: a frozen layer only with --force; the top overlay at once.
    const keep = await runCli(['overlay', 'discard', patch]);
    t.equal(keep.code, 1);
    t.match(keep.stderr, /is frozen: overlays made on it as a layer read through it; --force removes it anyway/);
    const gone = await runCli(['overlay', 'discard', vmFile]);
    t.equal(gone.code, 0, describeRun(gone));
    t.throws(() => statSync(vmFile), { code: 'ENOENT' });
    const notOverlay = await runCli(['overlay', 'discard', base]);
    t.equal(notOverlay.code, 1, 'discard refuses a file that is not an overlay');
    t.match(notOverlay.stderr, /not an nbd-cow overlay/);
    await guard.check();

    t.test('the same stack from a config file', async (t) => {
      const config = join(dir, 'lab.yaml');
      writeFileSync(
        config,
        [
          'listen:',
          '  - tcp: 127.0.0.1:0',
          'exports:',
          '  golden:',
          `    base: ${base}`,
          `    layers: [${tools}, ${patch}]`,
          `    overlay-dir: ${overlays}`,
          '',
        ].join('\n'),
      );
      const configured = await startServeConfig(t, config);
      t.same((await nbdMap(t, configured.uri, 'qemu:allocation-depth')).slice(0, 3), [
        [0, 64 * KiB, 3],
        [64 * KiB, 64 * KiB, 2],
        [128 * KiB, MiB - 128 * KiB, 4],
      ]);
      t.equal((await configured.stop()).code, 0);
      t.equal(await sha256File(base), guard.sha256, 'the base never changed');
    });
  });
}
