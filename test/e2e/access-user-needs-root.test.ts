// --user and --group from a server that is not root: refused in one line, exit 1, before the base
// is opened or anything is bound. Run as root, the test runs the CLI as nobody through setpriv.

import { chmodSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { makePatternBase } from '../helpers/bases.js';
import { requireAll } from '../helpers/ci.js';
import { missing } from '../helpers/clients.js';
import { describeRun, run } from '../helpers/processes.js';
import { CLI } from '../helpers/server-process.js';

const isRoot = process.geteuid?.() === 0;
/**
 * The CLI without the test runner's instrumentation (tap's processinfo hook, V8 coverage), which,
 * once the server is no longer root, could not write its files under .tap/ and would add stderr
 * lines. tap puts its hook into every child's environment, so `env -u` drops it one level down.
 */
const PLAIN_CLI = ['env', '-u', 'NODE_OPTIONS', '-u', 'NODE_V8_COVERAGE', CLI] as const;

/** The CLI as a user that is not root: this process, or nobody through setpriv when we are root. */
function runAsNonRoot(args: readonly string[]): ReturnType<typeof run> {
  if (!isRoot) return run(CLI, args);
  return run('setpriv', ['--reuid=65534', '--regid=65534', '--clear-groups', '--', ...PLAIN_CLI, ...args]);
}

if (requireAll(t, isRoot ? missing('setpriv') : [], 'setpriv comes with util-linux')) {
  for (const flag of [
    ['--user', 'nobody'],
    ['--group', 'nogroup'],
  ]) {
    t.test(`${flag.join(' ')} without root`, async (t) => {
      const dir = t.testdir();
      chmodSync(dir, 0o755);
      const base = await makePatternBase(dir, 8 * 1024 * 1024);
      const r = await runAsNonRoot(['serve', base, '-p', '0', ...flag, '--overlay-dir', join(dir, 'ov')]);
      t.equal(r.code, 1, describeRun(r));
      t.equal(r.stdout, '', 'no URI');
      t.match(
        r.stderr,
        new RegExp(`^nbd-cow: cannot switch to ${flag.join(' ').slice(2)}: the server is not running as root \\(uid \\d+\\)\\n$`),
      );
    });
  }
}
