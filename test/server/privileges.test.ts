// Privileges: resolving --user/--group (root only), handing directories made at start-up to the
// target, and the switch itself, which is for good: it runs in a child process (this file, run
// again with DROP_CHILD set) that reports its ids and whether setuid(0) still works.

import { spawn } from 'node:child_process';
import { chmodSync, mkdirSync, statSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import t from 'tap';
import { dropPrivileges, handOverCreatedDirs, type PrivilegeTarget, privilegeTarget } from '../../lib/server/privileges.js';

const NOBODY = 65534;
const isRoot = process.geteuid?.() === 0;
/** Switching users needs root; without it these are skipped (the not-root refusal runs instead). */
const AS_ROOT = { skip: isRoot ? false : 'needs root' };

interface ChildReport {
  readonly ids?: readonly number[];
  readonly groups?: readonly number[];
  readonly regained?: boolean;
  readonly error?: string;
}

/** In the child: drop to DROP_CHILD's target, print one RESULT line, exit. */
function childMain(spec: string): void {
  const { target, dir } = JSON.parse(spec) as { target: PrivilegeTarget; dir?: string };
  let report: ChildReport;
  try {
    dropPrivileges(target, dir);
    let regained = true;
    try {
      process.setuid?.(0);
    } catch {
      regained = false;
    }
    const ids = [process.getuid?.(), process.geteuid?.(), process.getgid?.(), process.getegid?.()].map((id) => id ?? -1);
    report = { ids, groups: process.getgroups?.() ?? [], regained };
  } catch (err) {
    report = { error: (err as Error).message };
  }
  process.stdout.write(`RESULT ${JSON.stringify(report)}\n`);
}

/** Run this file as the child with `target` (and the directory to check); its report. */
function inChild(target: PrivilegeTarget, dir?: string): Promise<ChildReport> {
  // Only the TypeScript loader of this run: the child runs no tests.
  const loader = process.execArgv.filter((arg) => arg.includes('typescript'));
  const child = spawn(process.execPath, [...loader, fileURLToPath(import.meta.url)], {
    env: { ...process.env, DROP_CHILD: JSON.stringify({ target, dir }) },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (s: string) => (out += s));
  return new Promise((resolve, reject) => {
    child.on('error', reject);
    child.on('close', () => {
      const line = out.split('\n').find((l) => l.startsWith('RESULT '));
      if (line === undefined) reject(new Error(`child printed no RESULT: ${out}`));
      else resolve(JSON.parse(line.slice('RESULT '.length)) as ChildReport);
    });
  });
}

const childSpec = process.env['DROP_CHILD'];
if (childSpec !== undefined) {
  childMain(childSpec);
} else {
  t.test('neither user nor group: nothing to do', async (t) => {
    t.equal(await privilegeTarget(), null);
  });

  t.test(
    'without root, --user and --group are refused in one line',
    { skip: isRoot && 'runs as root (see test/e2e/access-drop-privileges.test.ts)' },
    async (t) => {
      await t.rejects(privilegeTarget('nobody'), /^cannot switch to user nobody: the server is not running as root \(uid \d+\)$/);
      await t.rejects(
        privilegeTarget(undefined, 'nogroup'),
        /^cannot switch to group nogroup: the server is not running as root/,
      );
    },
  );

  t.test('user alone takes its primary group; a group given wins', AS_ROOT, async (t) => {
    t.strictSame(await privilegeTarget('nobody'), { uid: NOBODY, gid: NOBODY, who: 'user nobody' });
    t.strictSame(await privilegeTarget(NOBODY, 'root'), { uid: NOBODY, gid: 0, who: 'user nobody, group root' });
    t.strictSame(await privilegeTarget(undefined, String(NOBODY)), { gid: NOBODY, who: 'group nogroup' });
  });

  t.test('a uid without a passwd entry needs a group', AS_ROOT, async (t) => {
    await t.rejects(privilegeTarget(4_294_967_000), /has no entry in the user database; give a group too/);
    t.strictSame(await privilegeTarget(4_294_967_000, NOBODY), {
      uid: 4_294_967_000,
      gid: NOBODY,
      who: 'user 4294967000, group nogroup',
    });
  });

  t.test('an unknown user fails before anything else', AS_ROOT, async (t) => {
    await t.rejects(privilegeTarget('no-such-user-nbdcow'), { message: 'unknown user "no-such-user-nbdcow"' });
  });

  t.test('the directories start-up made go to the target; those that existed stay', AS_ROOT, async (t) => {
    const dir = t.testdir();
    const deep = join(dir, 'a', 'b', 'c');
    const first = await mkdir(deep, { recursive: true });
    t.equal(first, join(dir, 'a'));
    await handOverCreatedDirs(deep, first, { uid: NOBODY, gid: NOBODY, who: 'user nobody' });
    for (const path of [join(dir, 'a'), join(dir, 'a', 'b'), deep]) {
      t.strictSame([statSync(path).uid, statSync(path).gid], [NOBODY, NOBODY], path);
    }
    t.equal(statSync(dir).uid, 0, 'the existing parent is untouched');

    const existing = join(dir, 'existing');
    mkdirSync(existing);
    await handOverCreatedDirs(existing, undefined, { uid: NOBODY, gid: NOBODY, who: 'user nobody' });
    t.equal(statSync(existing).uid, 0, 'nothing created: nothing handed over');
    const made = join(dir, 'group-only');
    mkdirSync(made);
    await handOverCreatedDirs(made, made, { gid: NOBODY, who: 'group nogroup' });
    t.equal(statSync(made).uid, 0, 'a group alone keeps the owner');
  });

  t.test('the switch: every id changes, no supplementary group, root cannot be taken back', AS_ROOT, async (t) => {
    const dir = t.testdir();
    chmodSync(dir, 0o777);
    const report = await inChild({ uid: NOBODY, gid: NOBODY, who: 'user nobody' }, dir);
    t.strictSame(report, { ids: [NOBODY, NOBODY, NOBODY, NOBODY], groups: [NOBODY], regained: false });
  });

  t.test('the switch with a directory the user cannot write: one line naming both', AS_ROOT, async (t) => {
    const dir = t.testdir();
    chmodSync(dir, 0o700);
    const report = await inChild({ uid: NOBODY, gid: NOBODY, who: 'user nobody' }, dir);
    t.strictSame(report, { error: `overlay directory ${dir} is not writable by user nobody: EACCES` });
  });

  t.test('a group alone: the gid changes and the supplementary groups go', AS_ROOT, async (t) => {
    const report = await inChild({ gid: NOBODY, who: 'group nogroup' });
    t.strictSame(report.ids?.slice(2), [NOBODY, NOBODY]);
    t.strictSame(report.groups, [NOBODY]);
  });
}
