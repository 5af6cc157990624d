// The commit's progress bar: drawn (cli-progress) only on a terminal, one bar per phase; on a
// pipe or a file, or with --quiet, not a byte is written.

import { PassThrough } from 'node:stream';
import t from 'tap';
import { progressBar } from '../lib/progress-bar.js';

/** A stream that collects what is written, claiming to be a terminal when `tty`. */
function stream(tty: boolean): PassThrough & { isTTY: boolean; columns: number; text(): string } {
  const s = Object.assign(new PassThrough(), { isTTY: tty, columns: 100 });
  let text = '';
  s.on('data', (chunk: Buffer) => {
    text += chunk.toString('utf8');
  });
  return Object.assign(s, { text: () => text });
}

t.test('on a terminal: a bar per phase, sizes in qemu-img units', async (t) => {
  const out = stream(true);
  const bar = progressBar({ stream: out });
  bar.update('copy', 0, 4 * 1048576);
  bar.update('copy', 4 * 1048576, 4 * 1048576);
  bar.update('verify', 1048576, 4 * 1048576);
  bar.stop();
  bar.stop();
  await new Promise((resolve) => setImmediate(resolve));
  const text = out.text();
  t.match(text, /copy {3}\|.*\| 100% \| 4 MiB of 4 MiB/);
  t.match(text, /verify \|.*\| 25% \| 1 MiB of 4 MiB/);
});

t.test('not a terminal, or quiet: nothing at all', async (t) => {
  for (const [what, out, quiet] of [
    ['a pipe', stream(false), false],
    ['quiet', stream(true), true],
  ] as const) {
    const bar = progressBar({ stream: out, quiet });
    bar.update('copy', 1, 2);
    bar.update('copy', 2, 2);
    bar.stop();
    await new Promise((resolve) => setImmediate(resolve));
    t.equal(out.text(), '', what);
  }
});
