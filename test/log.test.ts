import t from 'tap';
import { createLogger, isLogLevel, type LogLevel, levelFromEnv } from '../lib/log.js';

function capture(level: LogLevel): { lines: string[]; log: ReturnType<typeof createLogger> } {
  const lines: string[] = [];
  return { lines, log: createLogger(level, (line) => lines.push(line)) };
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
  const log = createLogger('debug', (line) => lines.push(line), 3);
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
