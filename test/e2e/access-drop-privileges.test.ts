// --user nobody --group nogroup, started as root: the base (readable by root only) is opened and
// the overlay directory made before the switch; then /proc/PID/status shows nobody's ids and no
// supplementary group, nbdinfo and qemu-io are served, overlays are nobody's files and are
// deleted by it at stop. An existing overlay directory nobody cannot write stops start-up.

import { chmodSync, mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { makePatternBase } from '../helpers/bases.js';
import { requireAll } from '../helpers/ci.js';
import { missing, pythonWithNbd } from '../helpers/clients.js';
import { describeRun, run } from '../helpers/processes.js';
import { pySession } from '../helpers/py-session.js';
import { CLI, matchStderr, runCli, startServe } from '../helpers/server-process.js';

const SIZE = 8 * 1024 * 1024;
const NOBODY = 65534;
/**
 * The CLI without the test runner's instrumentation (tap's processinfo hook, V8 coverage), which,
 * once the server is no longer root, could not write its files under .tap/ and would add stderr
 * lines. tap puts its hook into every child's environment, so `env -u` drops it one level down.
 */
const PLAIN_CLI = ['env', '-u', 'NODE_OPTIONS', '-u', 'NODE_V8_COVERAGE', CLI] as const;

/** The Uid/Gid/Groups lines of /proc/PID/status. */
function idsOf(pid: number): { uid: string; gid: string; groups: string } {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string): string => new RegExp(`^${name}:[ \\t]*(.*)$`, 'm').exec(status)?.[1]?.trim() ?? '';
  return { uid: field('Uid'), gid: field('Gid'), groups: field('Groups') };
}

const absent = missing('nbdinfo', 'qemu-io', 'getent');
if (process.geteuid?.() !== 0) absent.push('root (the server must start as root to switch users)');
if (pythonWithNbd() === undefined) absent.push('python3-libnbd');
if (requireAll(t, absent, 'run the tests as root; make deps-test installs the clients')) {
  t.test('serve as nobody:nogroup', async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, SIZE);
    chmodSync(base, 0o600);
    const overlays = join(dir, 'made-by-server', 'overlays');
    const server = await startServe(t, base, ['--user', 'nobody', '--group', 'nogroup', '--overlay-dir', overlays]);

    t.strictSame(idsOf(server.pid), { uid: '65534\t65534\t65534\t65534', gid: '65534\t65534\t65534\t65534', groups: '' });
    await matchStderr(t, server, /running as user nobody, group nogroup/);
    for (const path of [join(dir, 'made-by-server'), overlays]) {
      t.strictSame([statSync(path).uid, statSync(path).gid], [NOBODY, NOBODY], `${path} is nobody's`);
    }

    const info = await run('nbdinfo', ['--size', server.uri]);
    t.equal(info.code, 0, describeRun(info));
    t.equal(info.stdout.trim(), String(SIZE), 'the root-only base is served');
    const io = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0xab 0 64k', '-c', 'read -P 0xab 0 64k', server.uri]);
    t.equal(io.code, 0, describeRun(io));
    t.notMatch(io.stdout, /Pattern verification failed/, 'the write reads back');

    // While a connection holds an overlay, its file is nobody's.
    const py = pySession(t);
    await py.ok({ op: 'connect', h: 'a', uri: server.uri });
    await py.ok({ op: 'pwrite', h: 'a', offset: 4096, data: Buffer.alloc(4096, 0xcd).toString('base64') });
    const files = readdirSync(overlays);
    t.equal(files.length, 1, 'one overlay file');
    t.equal(statSync(join(overlays, files[0] ?? '')).uid, NOBODY, 'the overlay file is nobody’s');
    await py.end();

    t.equal((await server.stop()).code, 0, 'clean stop');
    t.strictSame(readdirSync(overlays), [], 'the throwaway overlays were deleted as nobody');
  });

  t.test('an existing overlay directory nobody cannot write: one line, exit 1, nothing served', async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, SIZE);
    const overlays = join(dir, 'root-only');
    mkdirSync(overlays, { mode: 0o700 });
    const [env, ...envArgs] = PLAIN_CLI;
    const r = await run(env, [...envArgs, 'serve', base, '-p', '0', '--user', 'nobody', '--overlay-dir', overlays]);
    t.equal(r.code, 1, describeRun(r));
    t.equal(r.stdout, '', 'no URI');
    t.equal(r.stderr, `nbd-cow: overlay directory ${overlays} is not writable by user nobody: EACCES\n`);
  });

  t.test('an unknown user: one line, exit 1', async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, SIZE);
    const r = await runCli(['serve', base, '-p', '0', '--user', 'no-such-user-nbdcow', '--overlay-dir', join(dir, 'ov')]);
    t.equal(r.code, 1, describeRun(r));
    t.equal(r.stderr, 'nbd-cow: unknown user "no-such-user-nbdcow"\n');
    t.equal(r.stdout, '');
  });
}
