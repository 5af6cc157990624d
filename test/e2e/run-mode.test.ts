// `nbd-cow run BASE -- COMMAND…`: serves on a private unix socket, replaces {uri}, sets
// NBD_URI, exits with the command's status, and leaves no overlay behind.
// Syntax under test: `nbd-cow run BASE [serve options] -- COMMAND ARGS…` (options may also
// come before BASE).

import { join } from 'node:path';
import t from 'tap';
import { guardBase, makePatternBase } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { listDir } from '../helpers/files.js';
import { describeRun } from '../helpers/processes.js';
import { runCli } from '../helpers/server-process.js';

const SIZE = 16 * 1024 * 1024 + 1536;

if (requireClients(t, ['qemu-img', 'qemu-io', 'nbdinfo'])) {
  t.test('qemu-img info {uri}', async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, SIZE);
    // Options before BASE, then `--`: only the separator is under test here.
    const r = await runCli(['run', '--overlay-dir', join(dir, 'ov'), base, '--', 'qemu-img', 'info', '{uri}']);
    t.equal(r.code, 0, describeRun(r));
    t.match(r.stdout, `virtual size: 16 MiB (${SIZE} bytes)`);
    t.match(r.stdout, /image: nbd\+unix:\/\/\/base\?socket=/);
  });

  t.test('the command’s exit status is ours', async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, 8 * 1024 * 1024);
    const three = await runCli(['run', base, '--overlay-dir', join(dir, 'ov'), '--', 'sh', '-c', 'exit 3']);
    t.equal(three.code, 3, describeRun(three));
    const zero = await runCli(['run', base, '--overlay-dir', join(dir, 'ov'), '--', 'true']);
    t.equal(zero.code, 0, describeRun(zero));
    const missingCmd = await runCli(['run', base, '--overlay-dir', join(dir, 'ov'), '--', join(dir, 'no-such-command')]);
    t.not(missingCmd.code, 0, 'a command that cannot start fails');
    t.match(missingCmd.stderr, /no-such-command/);
  });

  t.test('NBD_URI in the environment', async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, 8 * 1024 * 1024);
    const r = await runCli([
      'run',
      base,
      '--overlay-dir',
      join(dir, 'ov'),
      '--',
      'sh',
      '-c',
      'printf "%s|%s\\n" "$NBD_URI" "$1"',
      'sh',
      '{uri}',
    ]);
    t.equal(r.code, 0, describeRun(r));
    const [env, arg] = r.stdout.trim().split('|');
    t.match(env, /^nbd\+unix:\/\/\/base\?socket=.+/, 'NBD_URI is the server URI');
    t.equal(arg, env, '{uri} is replaced by the same URI');
  });

  t.test('writes through run are thrown away', async (t) => {
    const dir = t.testdir();
    const overlays = join(dir, 'ov');
    const base = await makePatternBase(dir, 8 * 1024 * 1024);
    const guard = await guardBase(t, base);
    const script = 'qemu-io -f raw "$NBD_URI" -c "write -P 0x55 0 1M" -c "read -P 0x55 0 1M"';
    const r = await runCli(['run', base, '--overlay-dir', overlays, '--', 'sh', '-c', script]);
    t.equal(r.code, 0, describeRun(r));
    t.match(r.stdout, /wrote 1048576\/1048576 bytes at offset 0/, 'the write went through');
    t.match(r.stdout, /read 1048576\/1048576 bytes at offset 0/, 'and read back');
    t.notMatch(r.stdout, /Pattern verification failed/);
    t.same(listDir(overlays), [], 'no overlay left after run');
    await guard.check();
  });

  t.test('run with an explicit TCP port 0', async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, 8 * 1024 * 1024);
    const r = await runCli(['run', base, '-p', '0', '--overlay-dir', join(dir, 'ov'), '--', 'nbdinfo', '--size', '{uri}']);
    t.equal(r.code, 0, describeRun(r));
    t.equal(r.stdout.trim(), String(8 * 1024 * 1024));
  });
}
