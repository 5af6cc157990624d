// `nbd-cow overlay commit` on a named overlay written by qemu-io through the server: the new
// image is byte for byte what nbdcopy read from the live export, sparse where it reads as zeros,
// and the base and the overlay are unchanged. Refused in one line each: an existing NEW (unless
// --force), an overlay of another base, one a running server holds, one a killed server left
// dirty (both committed with --force). No progress bar unless stderr is a terminal (and then
// none with --quiet).

import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { guardBase, makePatternBase, makeRandomBase, sha256File } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { describeRun, type RunResult, run } from '../helpers/processes.js';
import { pySession } from '../helpers/py-session.js';
import { CLI, runCli, startServe } from '../helpers/server-process.js';

const MiB = 1024 * 1024;
const SIZE = 16 * MiB;

function expectRefusal(t: Test, r: RunResult, message: RegExp): void {
  t.equal(r.code, 1, describeRun(r));
  t.equal(r.stdout, '', 'nothing on stdout');
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  t.equal(lines.length, 1, `one line: ${r.stderr}`);
  t.match(lines[0], message);
}

/** Serve BASE with named overlays and write into golden@c with qemu-io; the server keeps running. */
async function writeThroughServer(t: Test, dir: string, base: string) {
  const overlays = join(dir, 'overlays');
  const server = await startServe(t, base, ['--overlay-dir', overlays, '--overlays', 'named']);
  const io = await run('qemu-io', [
    '-f',
    'raw',
    '-c',
    'write -P 0x5a 0 64k',
    '-c',
    'write -P 0x33 1000 3000', // partial blocks: copied up
    '-c',
    'write -z -u 2M 2M', // WRITE_ZEROES that may punch: zero state
    '-c',
    'discard 5M 64k', // TRIM: zero state
    '-c',
    'write -z 6M 1M', // WRITE_ZEROES with NO_HOLE: zeros stored as data
    '-c',
    `write -P 0x77 ${SIZE - 4096} 4096`,
    `${server.uri}@c`,
  ]);
  t.equal(io.code, 0, describeRun(io));
  return { server, file: join(overlays, 'named-golden@c.cow') };
}

if (requireClients(t, ['qemu-io', 'nbdcopy'])) {
  t.test('the image is what the live export read, sparse, and nothing else changed', async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, SIZE, 'golden.img');
    const guard = await guardBase(t, base);
    const { server, file } = await writeThroughServer(t, dir, base);
    const live = join(dir, 'live.raw');
    const copy = await run('nbdcopy', [`${server.uri}@c`, live]);
    t.equal(copy.code, 0, describeRun(copy));
    t.equal((await server.stop()).code, 0);
    const overlayBefore = await sha256File(file);

    const output = join(dir, 'new.img');
    const r = await runCli(['overlay', 'commit', file, '--base', base, '-o', output]);
    t.equal(r.code, 0, describeRun(r));
    t.equal(r.stderr, '', 'no progress bar when stderr is not a terminal');
    t.match(
      r.stdout,
      /^.*new\.img: 16 MiB \(16777216 bytes\), [\d.]+ MiB written, [\d.]+ MiB left as holes \(disk size [\d.]+ MiB\); verified, flushed\n$/,
    );
    t.ok(readFileSync(output).equals(readFileSync(live)), 'byte for byte what nbdcopy read from the live export');
    // Zeros: the base's zero band (2 MiB of 16), the zeroed 2 MiB and 1 MiB, the trimmed 64 KiB.
    const allocated = statSync(output).blocks * 512;
    t.ok(allocated <= SIZE - 5 * MiB, `sparse where zero: ${allocated} of ${SIZE} bytes allocated`);
    t.same(readdirSync(dir).sort(), ['golden.img', 'live.raw', 'new.img', 'overlays'], 'no NEW.tmp left');
    t.equal(await sha256File(file), overlayBefore, 'the overlay is unchanged');

    expectRefusal(
      t,
      await runCli(['overlay', 'commit', file, '--base', base, '-o', output]),
      /^nbd-cow: .*new\.img exists: not overwritten \(--force replaces it\)$/,
    );
    const again = await runCli(['overlay', 'commit', file, '--base', base, '-o', output, '--force', '--quiet']);
    t.equal(again.code, 0, describeRun(again));
    t.equal(again.stdout, '', '--quiet: no summary');
    t.match(again.stderr, /^nbd-cow: warning: --force: replaced .*new\.img\n$/);
    t.ok(readFileSync(output).equals(readFileSync(live)));

    // Without the read-back and the flushes: the same image, and the summary says what was left out.
    const unchecked = join(dir, 'unchecked.img');
    const fast = await runCli(['overlay', 'commit', file, '--base', base, '-o', unchecked, '--no-verify', '--no-flush']);
    t.equal(fast.code, 0, describeRun(fast));
    t.match(fast.stdout, /unchecked\.img: 16 MiB .*; not verified, not flushed\n$/);
    t.ok(readFileSync(unchecked).equals(readFileSync(live)), '--no-verify --no-flush: the same bytes');
    t.equal(statSync(unchecked).blocks, statSync(output).blocks, 'and as sparse');

    const other = await makeRandomBase(dir, SIZE, 'other.img');
    expectRefusal(
      t,
      await runCli(['overlay', 'commit', file, '--base', other, '-o', join(dir, 'x.img'), '--force']),
      /^nbd-cow: overlay .* belongs to another base image: made for \(size 16777216, fingerprint [0-9a-f]+…\), the base is \(size 16777216, fingerprint [0-9a-f]+…\)$/,
    );
    t.notOk(existsSync(join(dir, 'x.img')) || existsSync(join(dir, 'x.img.tmp')), 'nothing written');
    t.equal(await sha256File(file), overlayBefore, 'the overlay is still unchanged');
    await guard.check();
  });

  t.test('in use by a running server: refused; --force commits its flushed state', async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, SIZE, 'golden.img');
    const { server, file } = await writeThroughServer(t, dir, base);
    const py = pySession(t);
    await py.ok({ op: 'connect', h: 'a', uri: `${server.uri}@c` }); // holds the overlay open
    await py.ok({ op: 'flush', h: 'a' });
    const output = join(dir, 'new.img');
    expectRefusal(
      t,
      await runCli(['overlay', 'commit', file, '--base', base, '-o', output]),
      new RegExp(`^nbd-cow: overlay .* is in use by process ${server.pid} .*: stop the server first, or --force`),
    );
    t.notOk(existsSync(output));
    const forced = await runCli(['overlay', 'commit', file, '--base', base, '-o', output, '--force']);
    t.equal(forced.code, 0, describeRun(forced));
    t.match(forced.stderr, new RegExp(`^nbd-cow: warning: --force: overlay in use by process ${server.pid}\\n$`));
    const reference = Buffer.alloc(SIZE);
    for (let at = 0; at < SIZE; at += MiB) (await py.pread('a', at, MiB)).copy(reference, at);
    t.ok(readFileSync(output).equals(reference), 'what the server serves (everything was flushed)');
    t.same(await py.pread('a', 0, 4), Buffer.alloc(4, 0x5a), 'the server goes on undisturbed');
    t.equal(await py.end(), 0);
    t.equal((await server.stop()).code, 0);
  });

  t.test('left dirty by a killed server: refused; --force commits its last flushed state', async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, SIZE, 'golden.img');
    const { server, file } = await writeThroughServer(t, dir, base);
    const py = pySession(t);
    await py.ok({ op: 'connect', h: 'a', uri: `${server.uri}@c` });
    await py.ok({ op: 'pwrite', h: 'a', offset: 8 * MiB, data: Buffer.alloc(4096, 0x99).toString('base64') });
    await py.ok({ op: 'flush', h: 'a' });
    const live = join(dir, 'live.raw');
    t.equal((await run('nbdcopy', [`${server.uri}@c`, live])).code, 0);
    await server.stop('SIGKILL');
    const output = join(dir, 'new.img');
    expectRefusal(
      t,
      await runCli(['overlay', 'commit', file, '--base', base, '-o', output]),
      /^nbd-cow: overlay .* was not closed cleanly: run 'nbd-cow overlay check .* --base .* --repair' first, or --force/,
    );
    const forced = await runCli(['overlay', 'commit', file, '--base', base, '-o', output, '--force']);
    t.equal(forced.code, 0, describeRun(forced));
    t.match(forced.stderr, /^nbd-cow: warning: --force: overlay not closed cleanly\n$/);
    t.ok(readFileSync(output).equals(readFileSync(live)), 'every flushed write is there');
  });
}

if (requireClients(t, ['qemu-io', 'script'])) {
  t.test('a progress bar on a terminal, none with --quiet', async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, SIZE, 'golden.img');
    const { server, file } = await writeThroughServer(t, dir, base);
    t.equal((await server.stop()).code, 0);
    // script(1) runs the command on a pseudo-terminal and copies what it writes to stdout.
    const onTty = (args: string): Promise<RunResult> =>
      run('script', ['-qec', `${process.execPath} ${CLI} overlay commit ${file} --base ${base} ${args}`, '/dev/null']);
    const drawn = await onTty(`-o ${join(dir, 'a.img')}`);
    t.equal(drawn.code, 0, describeRun(drawn));
    t.match(drawn.stdout, /copy +\|[█░]+\| 100% \| 16 MiB of 16 MiB/, 'the copy bar reaches 100 %');
    t.match(drawn.stdout, /verify \|[█░]+\| 100% \| 16 MiB of 16 MiB/, 'then the verification');
    const quiet = await onTty(`-o ${join(dir, 'b.img')} --quiet`);
    t.equal(quiet.code, 0, describeRun(quiet));
    t.equal(quiet.stdout, '', 'nothing at all with --quiet');
  });
}
