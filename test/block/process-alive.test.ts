// processExists and parentPid against real processes: this one, a child it starts, and a pid
// that no longer runs.

import { spawn } from 'node:child_process';
import t from 'tap';
import { parentPid, processExists } from '../../lib/block/process-alive.js';

t.test('processExists: this process runs; a child that exited does not', async (t) => {
  t.equal(processExists(process.pid), true);
  const child = spawn(process.execPath, ['-e', '0']);
  const pid = child.pid as number;
  await new Promise((resolve) => child.on('exit', resolve));
  t.equal(processExists(pid), false, `pid ${pid} is gone once reaped`);
});

t.test('parentPid: read from /proc, undefined for a process that is gone', async (t) => {
  t.equal(parentPid(process.pid), process.ppid, "this process's parent");
  // A name with spaces and a parenthesis: the parser reads after the last ')'.
  const child = spawn(process.execPath, ['-e', "process.title = 'a (b) c'; setTimeout(() => {}, 5000)"]);
  const pid = child.pid as number;
  t.teardown(() => {
    child.kill('SIGKILL');
  });
  await new Promise((resolve) => setTimeout(resolve, 300));
  t.equal(parentPid(pid), process.pid, 'a child names this process as its parent');
  child.kill('SIGKILL');
  await new Promise((resolve) => child.on('exit', resolve));
  t.equal(parentPid(pid), undefined, 'nothing for a pid that no longer runs');
});
