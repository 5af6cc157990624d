// Bad access flags: one line on stderr, exit 1, nothing on stdout (no URI).

import { join } from 'node:path';
import t from 'tap';
import { makePatternBase } from '../helpers/bases.js';
import { describeRun } from '../helpers/processes.js';
import { runCli } from '../helpers/server-process.js';

const CASES: ReadonlyArray<{ args: string[]; error: RegExp }> = [
  { args: ['--allow', '10.0.0.0/33'], error: /--allow.*"10\.0\.0\.0\/33": the prefix length must be a number from 0 to 32/ },
  { args: ['--allow', 'example.com'], error: /--allow.*"example\.com": expected an IPv4 or IPv6 address/ },
  { args: ['--allow', '127.0.0.1', '--allow', '::1/200'], error: /"::1\/200": the prefix length must be a number from 0 to 128/ },
  { args: ['--max-connections', '0'], error: /--max-connections.*positive integer/ },
  { args: ['--max-connections', 'many'], error: /--max-connections.*positive integer/ },
  { args: ['--socket-mode', '0888'], error: /--socket-mode.*octal mode/ },
  { args: ['--socket-mode', '01777'], error: /--socket-mode.*octal mode/ },
  { args: ['--socket-mode', '0660'], error: /^nbd-cow: a socket mode or group applies to a unix socket only, not to TCP$/ },
  { args: ['--socket-group', 'no-such-group-nbdcow', '-k', 'SOCKET'], error: /^nbd-cow: unknown group "no-such-group-nbdcow"$/ },
  { args: ['--user=-x'], error: /^nbd-cow: bad user name "-x": expected a name or a numeric id$/ },
];

for (const { args, error } of CASES) {
  t.test(args.join(' '), async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, 1024 * 1024);
    const listen = args.includes('-k') ? [] : ['-p', '0'];
    const argv = args.map((a) => (a === 'SOCKET' ? join(dir, 'nbd.sock') : a));
    const r = await runCli(['serve', base, ...listen, ...argv, '--overlay-dir', join(dir, 'ov')]);
    t.equal(r.code, 1, describeRun(r));
    t.equal(r.stdout, '', 'nothing on stdout');
    const lines = r.stderr.split('\n').filter((l) => l !== '');
    t.equal(lines.length, 1, `one line: ${JSON.stringify(r.stderr)}`);
    t.match(lines[0], error);
  });
}
