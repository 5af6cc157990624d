// CLI errors: one line on stderr, a non-zero exit, and nothing on stdout (no URI).

import { mkdirSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { join } from 'node:path';
import t, { type Test } from 'tap';
import { makePatternBase } from '../helpers/bases.js';
import { describeRun, type RunResult } from '../helpers/processes.js';
import { runCli } from '../helpers/server-process.js';

function expectOneLineError(t: Test, r: RunResult, pattern: RegExp): void {
  t.not(r.code, 0, `exit ≠ 0 (${describeRun(r)})`);
  t.equal(r.signal, null, 'not killed');
  t.equal(r.stdout, '', 'nothing on stdout');
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  t.equal(lines.length, 1, `one line on stderr: ${JSON.stringify(r.stderr)}`);
  t.match(lines[0], pattern);
}

t.test('missing base path', async (t) => {
  const dir = t.testdir();
  const r = await runCli(['serve', join(dir, 'nope.img'), '-p', '0', '--overlay-dir', join(dir, 'ov')]);
  expectOneLineError(t, r, /nope\.img.*(no such file|ENOENT)/i);
});

t.test('a directory as base', async (t) => {
  const dir = t.testdir();
  mkdirSync(join(dir, 'adir'));
  const r = await runCli(['serve', join(dir, 'adir'), '-p', '0', '--overlay-dir', join(dir, 'ov')]);
  expectOneLineError(t, r, /adir.*(directory|EISDIR)/i);
});

t.test('port already in use', async (t) => {
  const dir = t.testdir();
  const base = await makePatternBase(dir, 8 * 1024 * 1024);
  const blocker: Server = createServer();
  await new Promise<void>((resolve) => blocker.listen({ host: '127.0.0.1', port: 0 }, resolve));
  t.teardown(() => new Promise<void>((resolve) => blocker.close(() => resolve())));
  const address = blocker.address();
  const port = typeof address === 'object' && address !== null ? address.port : 0;
  const r = await runCli(['serve', base, '-b', '127.0.0.1', '-p', String(port), '--overlay-dir', join(dir, 'ov')]);
  expectOneLineError(t, r, new RegExp(`${port}.*(in use|EADDRINUSE)`, 'i'));
});

for (const bad of ['1000', '256', '2M', 'abc', '0', '-4096', '4096x']) {
  t.test(`bad --block-size ${bad}`, async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, 8 * 1024 * 1024);
    const r = await runCli(['serve', base, '-p', '0', `--block-size=${bad}`, '--overlay-dir', join(dir, 'ov')]);
    expectOneLineError(t, r, /block-size|block size|power of two|size/i);
  });
}

t.test('bad port', async (t) => {
  const dir = t.testdir();
  const base = await makePatternBase(dir, 8 * 1024 * 1024);
  const r = await runCli(['serve', base, '-p', '70000', '--overlay-dir', join(dir, 'ov')]);
  expectOneLineError(t, r, /port/i);
});

t.test('run without a command', async (t) => {
  const dir = t.testdir();
  const base = await makePatternBase(dir, 8 * 1024 * 1024);
  const r = await runCli(['run', base]);
  t.not(r.code, 0, describeRun(r));
  t.equal(r.stdout, '');
});
