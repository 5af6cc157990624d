// --log-format json: every line on stderr is one JSON object with level, time and msg, and the
// connection events carry their fields (peer, export, overlay, counts, reason). A bad format is
// one line and exit 1.

import { join } from 'node:path';
import t from 'tap';
import { makePatternBase } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { describeRun, run } from '../helpers/processes.js';
import { runCli, startServe } from '../helpers/server-process.js';
import { waitFor } from '../helpers/wait.js';

const SIZE = 8 * 1024 * 1024;

type Line = Record<string, unknown>;

/** Every line of `stderr` parsed: a line that is not a JSON object throws, naming it. */
function parseLines(stderr: string): Line[] {
  return stderr
    .split('\n')
    .filter((l) => l !== '')
    .map((l) => {
      const value: unknown = JSON.parse(l);
      if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new Error(`not an object: ${l}`);
      return value as Line;
    });
}

const ofEvent = (lines: Line[], event: string): Line[] => lines.filter((l) => l['event'] === event);

if (requireClients(t, ['qemu-io', 'nbdinfo'])) {
  t.test('a qemu-io session and a refused export, as JSON lines with fields', async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, SIZE, 'golden.img');
    const server = await startServe(t, base, ['--overlay-dir', join(dir, 'overlays'), '--log-format', 'json']);

    const io = await run('qemu-io', ['-f', 'raw', '-c', 'write -P 0xab 4096 8k', '-c', 'read -P 0xab 4096 4k', server.uri]);
    t.equal(io.code, 0, describeRun(io));
    const wrong = await run('nbdinfo', ['--size', server.uri.replace(/golden$/, 'nosuch')]);
    t.not(wrong.code, 0, `an unknown export is refused: ${describeRun(wrong)}`);
    await waitFor(() => ofEvent(parseLines(server.stderr()), 'disconnect').length === 2, 'two disconnect lines');

    const lines = parseLines(server.stderr());
    for (const line of lines) {
      t.ok(typeof line['level'] === 'string' && typeof line['msg'] === 'string', `level and msg: ${JSON.stringify(line)}`);
      t.ok(!Number.isNaN(Date.parse(String(line['time']))), `time: ${String(line['time'])}`);
    }
    const [first, second] = ofEvent(lines, 'connect');
    t.match(first, { level: 'info', conn: 1, peer: /^127\.0\.0\.1:\d+$/, msg: /connected$/ });
    t.match(second, { level: 'info', conn: 2 });
    t.match(ofEvent(lines, 'export'), [
      {
        level: 'info',
        conn: 1,
        export: 'golden',
        overlay: 'throwaway',
        structured_replies: true,
        meta_contexts: ['base:allocation'],
        tls: false,
      },
    ]);
    t.equal(ofEvent(lines, 'export').length, 1, 'only qemu-io chose an export');
    t.match(ofEvent(lines, 'option-refused'), [
      { level: 'info', conn: 2, option: 'NBD_OPT_GO', reply: 'NBD_REP_ERR_UNKNOWN', reason: /nosuch/ },
    ]);
    const [served, refused] = ofEvent(lines, 'disconnect');
    t.match(served, {
      level: 'info',
      conn: 1,
      reason: 'client sent NBD_CMD_DISC',
      export: 'golden',
      overlay: 'throwaway',
      bytes_read: 4096,
      bytes_written: 8192,
      overlay_bytes: 8192,
    });
    t.ok(Number(served?.['requests']) >= 2, `requests: ${served?.['requests']}`);
    t.equal(typeof served?.['duration_ms'], 'number', 'duration_ms');
    t.match(refused, { conn: 2, export: null, requests: 0, bytes_read: 0, bytes_written: 0 });
    t.notOk(
      lines.some((l) => l['level'] === 'debug'),
      'no debug lines without -v',
    );
    t.equal((await server.stop()).code, 0);
  });
}

t.test('--log-format with another value is one line on stderr and exit 1', async (t) => {
  const dir = t.testdir();
  const base = await makePatternBase(dir, 1024 * 1024);
  const r = await runCli(['serve', base, '-p', '0', '--log-format', 'yaml']);
  t.equal(r.code, 1, describeRun(r));
  t.equal(r.stdout, '', 'no URI');
  const lines = r.stderr.split('\n').filter((l) => l !== '');
  t.equal(lines.length, 1, `one line: ${r.stderr}`);
  t.match(lines[0], /--log-format.*yaml.*text, json/);
});
