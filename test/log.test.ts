// The logger (log.ts): text and JSON lines, levels, NBD_COW_LOG, and the per-second limit on a
// flood of lines in both formats.

import t, { type Test } from 'tap';
import { createLogger, isLogLevel, type LogFormat, type LogLevel, levelFromEnv } from '../lib/log.js';

function capture(level: LogLevel, format: LogFormat = 'text'): { lines: string[]; log: ReturnType<typeof createLogger> } {
  const lines: string[] = [];
  return { lines, log: createLogger(level, (line) => lines.push(line), { format }) };
}

/** Each captured JSON line parsed; a line that is not one JSON object ending in \n fails the test. */
function parsed(t: Test, lines: readonly string[]): Record<string, unknown>[] {
  return lines.map((line) => {
    t.ok(line.endsWith('\n') && !line.slice(0, -1).includes('\n'), `one line: ${line}`);
    const value: unknown = JSON.parse(line);
    if (typeof value !== 'object' || value === null) throw new Error(`not an object: ${line}`);
    return value as Record<string, unknown>;
  });
}

t.test('line format: one line, prefixed, level named except for info', async (t) => {
  const { lines, log } = capture('debug');
  log.debug('d');
  log.info('i');
  log.warn('w');
  log.error('e');
  t.strictSame(lines, ['nbd-cow: debug: d\n', 'nbd-cow: i\n', 'nbd-cow: warn: w\n', 'nbd-cow: error: e\n']);
});

t.test('levels filter what is written and what enabled() says', async (t) => {
  const order: LogLevel[] = ['debug', 'info', 'warn', 'error', 'silent'];
  for (const [i, level] of order.entries()) {
    const { lines, log } = capture(level);
    log.debug('d');
    log.info('i');
    log.warn('w');
    log.error('e');
    t.equal(lines.length, Math.max(0, 4 - i), `${level}: ${4 - i} lines`);
    for (const [j, at] of order.entries()) {
      if (at === 'silent') continue;
      t.equal(log.enabled(at), j >= i, `${level}: enabled(${at})`);
    }
  }
});

t.test('isLogLevel accepts only the five names', async (t) => {
  for (const level of ['debug', 'info', 'warn', 'error', 'silent']) t.ok(isLogLevel(level), level);
  for (const other of ['', 'DEBUG', 'verbose', 'trace', 'toString', 'constructor', '__proto__', 'hasOwnProperty']) {
    t.notOk(isLogLevel(other), JSON.stringify(other));
  }
});

t.test('levelFromEnv reads NBD_COW_LOG, falling back on anything else', async (t) => {
  const saved = process.env['NBD_COW_LOG'];
  t.teardown(() => {
    if (saved === undefined) delete process.env['NBD_COW_LOG'];
    else process.env['NBD_COW_LOG'] = saved;
  });
  delete process.env['NBD_COW_LOG'];
  t.equal(levelFromEnv('info'), 'info', 'unset');
  process.env['NBD_COW_LOG'] = 'debug';
  t.equal(levelFromEnv('info'), 'debug');
  process.env['NBD_COW_LOG'] = 'silent';
  t.equal(levelFromEnv('warn'), 'silent');
  process.env['NBD_COW_LOG'] = 'loud';
  t.equal(levelFromEnv('warn'), 'warn', 'unknown value');
  process.env['NBD_COW_LOG'] = '';
  t.equal(levelFromEnv('error'), 'error', 'empty value');
});

t.test('the default writer is stderr', async (t) => {
  const writes: string[] = [];
  const original = process.stderr.write.bind(process.stderr);
  process.stderr.write = ((chunk: string | Uint8Array) => {
    writes.push(String(chunk));
    return true;
  }) as typeof process.stderr.write;
  try {
    createLogger('warn').warn('to stderr');
    createLogger('warn').info('dropped');
  } finally {
    process.stderr.write = original;
  }
  t.strictSame(writes, ['nbd-cow: warn: to stderr\n']);
});

t.test('a flood of lines is cut to the per-second limit and summed up; debug lines are not limited', async (t) => {
  const lines: string[] = [];
  const log = createLogger('debug', (line) => lines.push(line), { maxLinesPerSecond: 3 });
  for (let i = 0; i < 10; i++) log.warn(`w${i}`);
  for (let i = 0; i < 5; i++) log.debug(`d${i}`);
  t.strictSame(
    lines.filter((l) => l.includes('warn: w')),
    ['nbd-cow: warn: w0\n', 'nbd-cow: warn: w1\n', 'nbd-cow: warn: w2\n'],
    'three lines in the first second',
  );
  t.equal(lines.filter((l) => l.includes('debug: d')).length, 5, 'every debug line');
  await new Promise((resolve) => setTimeout(resolve, 1100));
  log.info('later');
  t.strictSame(lines.slice(-2), ['nbd-cow: warn: 7 log line(s) suppressed (more than 3 a second)\n', 'nbd-cow: later\n']);
});

t.test('json: one JSON object a line with level, time, msg and the fields given', async (t) => {
  const { lines, log } = capture('debug', 'json');
  log.debug('d');
  log.info('conn 1 (unix): connected', { event: 'connect', conn: 1, peer: 'unix' });
  log.warn('w', { meta_contexts: ['base:allocation'], export: null, tls: false });
  log.error('e');
  const records = parsed(t, lines);
  t.strictSame(
    records.map((r) => [r['level'], r['msg']]),
    [
      ['debug', 'd'],
      ['info', 'conn 1 (unix): connected'],
      ['warn', 'w'],
      ['error', 'e'],
    ],
  );
  for (const r of records) {
    t.equal(typeof r['time'], 'string', 'time');
    t.ok(!Number.isNaN(Date.parse(String(r['time']))), `time is a date: ${r['time']}`);
    t.equal(r['name'], 'nbd-cow');
    t.equal(r['pid'], process.pid);
  }
  t.match(records[1], { event: 'connect', conn: 1, peer: 'unix' });
  t.match(records[2], { meta_contexts: ['base:allocation'], export: null, tls: false });
});

t.test('json: levels filter what is written, as in text', async (t) => {
  const { lines, log } = capture('warn', 'json');
  log.debug('d');
  log.info('i', { event: 'connect' });
  log.warn('w');
  log.error('e');
  t.strictSame(
    parsed(t, lines).map((r) => r['msg']),
    ['w', 'e'],
  );
  t.notOk(log.enabled('info'));
  t.ok(log.enabled('warn'));
  const silent = capture('silent', 'json');
  silent.log.error('e');
  t.strictSame(silent.lines, [], 'silent writes nothing');
});

t.test('json: a flood is cut to the per-second limit and summed up in a JSON line', async (t) => {
  const lines: string[] = [];
  const log = createLogger('info', (line) => lines.push(line), { format: 'json', maxLinesPerSecond: 2 });
  for (let i = 0; i < 6; i++) log.info(`i${i}`, { conn: i });
  t.strictSame(
    parsed(t, lines).map((r) => r['msg']),
    ['i0', 'i1'],
    'two lines in the first second',
  );
  await new Promise((resolve) => setTimeout(resolve, 1100));
  log.info('later');
  const [summary, later] = parsed(t, lines.slice(-2));
  t.match(summary, { level: 'warn', suppressed: 4, msg: '4 log line(s) suppressed (more than 2 a second)' });
  t.match(later, { level: 'info', msg: 'later' });
});

t.test('text: fields are not shown, the message is the line', async (t) => {
  const { lines, log } = capture('info');
  log.info('conn 1 (unix): connected', { event: 'connect', conn: 1 });
  t.strictSame(lines, ['nbd-cow: conn 1 (unix): connected\n']);
});

t.test('a tag names the process in text lines (a worker of --workers N)', (t) => {
  const lines: string[] = [];
  const log = createLogger('info', (line) => lines.push(line), { tag: 'worker 42' });
  log.info('conn 1 (peer): connected');
  log.warn('late');
  t.same(lines, ['nbd-cow[worker 42]: conn 1 (peer): connected\n', 'nbd-cow[worker 42]: warn: late\n']);
  t.end();
});
