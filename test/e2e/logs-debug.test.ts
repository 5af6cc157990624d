// The debug trace (-v, or NBD_COW_LOG=debug): each option and each command by its spec name with
// its result, and the copy-on-write layer's copy-ups and zeroed blocks; -q leaves only errors.

import { join } from 'node:path';
import t from 'tap';
import { makePatternBase } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { describeRun, run } from '../helpers/processes.js';
import { runCli, startServe } from '../helpers/server-process.js';
import { waitFor } from '../helpers/wait.js';

const SIZE = 8 * 1024 * 1024;

/** A partial write (a copy-up of block 1 from the base), a read, and a discard of whole blocks. */
const QEMU_IO = ['-f', 'raw', '-c', 'write -P 0xcd 5000 100', '-c', 'read -P 0xcd 5000 100', '-c', 'discard 64k 64k'];

if (requireClients(t, ['qemu-io', 'nbdinfo'])) {
  t.test('-v traces options, commands with their result, copy-ups and zeroed blocks', async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, SIZE, 'golden.img');
    const server = await startServe(t, base, ['--overlay-dir', join(dir, 'overlays'), '-v']);
    const io = await run('qemu-io', [...QEMU_IO, server.uri]);
    t.equal(io.code, 0, describeRun(io));
    await waitFor(() => /disconnected/.test(server.stderr()), 'the disconnect line');
    const log = server.stderr();
    t.match(log, /^nbd-cow: debug: conn 1 \(127\.0\.0\.1:\d+\): NBD_OPT_GO \(\d+ bytes\)$/m, 'the option by name');
    t.match(log, /^nbd-cow: debug: conn 1 \(.*\): NBD_CMD_WRITE 100 bytes: ok in \d+\.\d{3} ms$/m, 'the write and its result');
    t.match(log, /^nbd-cow: debug: conn 1 \(.*\): NBD_CMD_READ 100 bytes: ok in /m, 'the read');
    t.match(log, /^nbd-cow: debug: conn 1 \(.*\): NBD_CMD_TRIM: ok in /m, 'the discard');
    t.match(log, /^nbd-cow: debug: overlay .*\.cow: block 1 copied up from the base$/m, 'the copy-up');
    t.match(log, /^nbd-cow: debug: overlay .*\.cow: blocks 16-31 zeroed$/m, 'the zeroed blocks');
    t.match(log, /^nbd-cow: conn 1 \(.*\): disconnected \(client sent NBD_CMD_DISC\)/m, 'and the info lines');
    t.equal((await server.stop()).code, 0);
  });

  t.test('NBD_COW_LOG=debug gives the trace without -v; -q wins over it and logs no connection', async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, SIZE, 'golden.img');
    const env = { ...process.env, NBD_COW_LOG: 'debug' };
    const args = ['run', base, '--overlay-dir', join(dir, 'overlays'), '--'];
    const traced = await runCli([...args, 'qemu-io', ...QEMU_IO, '{uri}'], { env });
    t.equal(traced.code, 0, describeRun(traced));
    t.match(traced.stderr, /debug: conn 1 \(unix\): NBD_CMD_WRITE 100 bytes: ok/);
    t.match(traced.stderr, /debug: overlay .*: block 1 copied up from the base/);

    const quiet = await runCli(['run', base, '-q', '--overlay-dir', join(dir, 'overlays'), '--', 'nbdinfo', '--size', '{uri}'], {
      env,
    });
    t.equal(quiet.code, 0, describeRun(quiet));
    t.equal(quiet.stderr, '', 'nothing on stderr with -q');
  });
}
