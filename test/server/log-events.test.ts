// The operators' log observer (log-events.ts): the line each event gives in text and JSON, which
// level it is at, and that with debug off the per-request and block-layer events do no work.

import t from 'tap';
import { createLogger, type LogFormat, type Logger, type LogLevel } from '../../lib/log.js';
import {
  NBD_CMD_FLUSH,
  NBD_CMD_READ,
  NBD_CMD_WRITE,
  NBD_ENOSPC,
  NBD_OPT_GO,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_UNSUP,
} from '../../lib/protocol/constants.js';
import { logEvents } from '../../lib/server/log-events.js';
import type { SessionRecord } from '../../lib/server/server-events.js';

function session(overrides: Partial<SessionRecord> = {}): SessionRecord {
  return {
    id: 7,
    peer: '10.1.2.3:5000',
    openedAt: Date.now() - 1500,
    exportName: null,
    configuredExport: null,
    overlay: null,
    structuredReplies: false,
    metaContexts: [],
    tls: null,
    requests: 0,
    bytesRead: 0,
    bytesWritten: 0,
    overlayBytes: () => 0,
    ...overrides,
  };
}

const served = (): SessionRecord =>
  session({
    exportName: 'golden@alice',
    overlay: 'named',
    structuredReplies: true,
    metaContexts: ['base:allocation', 'qemu:allocation-depth'],
    tls: { protocol: 'TLSv1.3', cipher: 'TLS_AES_256_GCM_SHA384', identity: 'alice' },
    requests: 3,
    bytesRead: 4096,
    bytesWritten: 65536,
    overlayBytes: () => 69632,
  });

function capture(level: LogLevel, format: LogFormat = 'text'): { lines: string[]; log: Logger } {
  const lines: string[] = [];
  return { lines, log: createLogger(level, (line) => lines.push(line.trimEnd()), { format }) };
}

function json(lines: readonly string[]): Record<string, unknown>[] {
  return lines.map((line) => JSON.parse(line) as Record<string, unknown>);
}

t.test('text: connect, export with what was negotiated, disconnect with its totals', async (t) => {
  const { lines, log } = capture('info');
  const events = logEvents(log);
  events.connectionOpened(session());
  events.exportChosen(served());
  events.connectionClosed(served(), 'client sent NBD_CMD_DISC');
  events.connectionClosed(session({ exportName: null }), 'client sent NBD_OPT_ABORT');
  t.equal(lines.length, 4);
  t.equal(lines[0], 'nbd-cow: conn 7 (10.1.2.3:5000): connected');
  t.equal(
    lines[1],
    'nbd-cow: conn 7 (10.1.2.3:5000): export "golden@alice" (named overlay); structured replies, ' +
      'meta contexts base:allocation, qemu:allocation-depth; TLS TLSv1.3 TLS_AES_256_GCM_SHA384, identity alice',
  );
  t.match(
    lines[2],
    /^nbd-cow: conn 7 \(10\.1\.2\.3:5000\): disconnected \(client sent NBD_CMD_DISC\): export "golden@alice", 3 requests, 4096 bytes read, 65536 bytes written, 69632 bytes in the overlay, \d+\.\d{3} s$/,
  );
  t.match(lines[3], /: disconnected \(client sent NBD_OPT_ABORT\): before choosing an export, \d+\.\d{3} s$/);
});

t.test('text: a plain session says so', async (t) => {
  const { lines, log } = capture('info');
  logEvents(log).exportChosen(session({ exportName: 'golden', overlay: 'read-only' }));
  t.strictSame(lines, [
    'nbd-cow: conn 7 (10.1.2.3:5000): export "golden" (read-only, no overlay); simple replies, no meta context; no TLS',
  ]);
});

t.test('json: every event line carries its fields', async (t) => {
  const { lines, log } = capture('debug', 'json');
  const events = logEvents(log);
  events.connectionOpened(session());
  events.exportChosen(served());
  events.requestDone(served(), NBD_CMD_WRITE, 0, 65536, 0.00025);
  events.connectionClosed(served(), 'client sent NBD_CMD_DISC');
  const [connect, chosen, request, disconnect] = json(lines);
  t.match(connect, { level: 'info', event: 'connect', conn: 7, peer: '10.1.2.3:5000', msg: /connected$/ });
  t.match(chosen, {
    level: 'info',
    event: 'export',
    export: 'golden@alice',
    overlay: 'named',
    structured_replies: true,
    meta_contexts: ['base:allocation', 'qemu:allocation-depth'],
    tls: true,
    tls_protocol: 'TLSv1.3',
    tls_cipher: 'TLS_AES_256_GCM_SHA384',
    tls_identity: 'alice',
  });
  t.match(request, { level: 'debug', event: 'request', command: 'NBD_CMD_WRITE', errno: 0, bytes: 65536, duration_ms: 0.25 });
  t.match(disconnect, {
    level: 'info',
    event: 'disconnect',
    peer: '10.1.2.3:5000',
    reason: 'client sent NBD_CMD_DISC',
    export: 'golden@alice',
    overlay: 'named',
    requests: 3,
    bytes_read: 4096,
    bytes_written: 65536,
    overlay_bytes: 69632,
  });
  t.ok(typeof disconnect?.['duration_ms'] === 'number' && disconnect['duration_ms'] >= 1500, 'duration_ms since openedAt');
});

t.test('option refusals: access ones at info with the reply, unknown or malformed ones at debug', async (t) => {
  const info = capture('info', 'json');
  const events = logEvents(info.log);
  events.optionRefused(session(), NBD_OPT_GO, NBD_REP_ERR_POLICY, 'named overlay "golden@bob" belongs to the TLS identity "bob"');
  events.optionRefused(session(), 99, NBD_REP_ERR_UNSUP, 'unsupported option');
  t.equal(info.lines.length, 1, 'the unknown option is not at info');
  t.match(json(info.lines)[0], {
    level: 'info',
    event: 'option-refused',
    option: 'NBD_OPT_GO',
    reply: 'NBD_REP_ERR_POLICY',
    reason: 'named overlay "golden@bob" belongs to the TLS identity "bob"',
    peer: '10.1.2.3:5000',
  });
  const debug = capture('debug');
  logEvents(debug.log).optionRefused(session(), NBD_OPT_LIST_META_CONTEXT, NBD_REP_ERR_UNSUP, 'no');
  t.strictSame(debug.lines, ['nbd-cow: debug: conn 7 (10.1.2.3:5000): refused NBD_OPT_LIST_META_CONTEXT: no']);
});

t.test('debug trace: requests by spec name and result, TLS, copy-ups, zeroed and elided blocks', async (t) => {
  const { lines, log } = capture('debug');
  const events = logEvents(log);
  events.requestDone(served(), NBD_CMD_READ, 0, 4096, 0.0001234);
  events.requestDone(served(), NBD_CMD_WRITE, NBD_ENOSPC, 0, 0.001);
  events.requestDone(served(), NBD_CMD_FLUSH, 0, 0, 0.002);
  events.tlsEstablished(served());
  events.copiedUp('/ov/eph-1-1.cow', 12, 'base');
  events.copiedUp('/ov/eph-1-1.cow', 13, 'zero');
  events.zeroed('/ov/eph-1-1.cow', 16, 16);
  events.zeroed('/ov/eph-1-1.cow', 40, 1);
  events.elided('/ov/eph-1-1.cow', 50, 2, 'zero');
  events.elided('/ov/eph-1-1.cow', 60, 1, 'base');
  t.strictSame(lines, [
    'nbd-cow: debug: conn 7 (10.1.2.3:5000): NBD_CMD_READ 4096 bytes: ok in 0.123 ms',
    'nbd-cow: debug: conn 7 (10.1.2.3:5000): NBD_CMD_WRITE: NBD_ENOSPC in 1.000 ms',
    'nbd-cow: debug: conn 7 (10.1.2.3:5000): NBD_CMD_FLUSH: ok in 2.000 ms',
    'nbd-cow: debug: conn 7 (10.1.2.3:5000): TLS TLSv1.3 TLS_AES_256_GCM_SHA384, identity alice',
    'nbd-cow: debug: overlay /ov/eph-1-1.cow: block 12 copied up from the base',
    'nbd-cow: debug: overlay /ov/eph-1-1.cow: block 13 filled with zeros',
    'nbd-cow: debug: overlay /ov/eph-1-1.cow: blocks 16-31 zeroed',
    'nbd-cow: debug: overlay /ov/eph-1-1.cow: block 40 zeroed',
    'nbd-cow: debug: overlay /ov/eph-1-1.cow: blocks 50-51 written as zeros: zero state, no data stored',
    'nbd-cow: debug: overlay /ov/eph-1-1.cow: block 60 written as the base holds them: base state, no data stored',
  ]);
  // test/guest reads TLS sessions from the -v log with this pattern.
  t.match(lines[3], /: TLS (\S+) (\S+), identity (\S+)$/);
});

t.test('refused connections are left to admission.ts (logged there, rate-limited per reason)', async (t) => {
  const { lines, log } = capture('debug');
  logEvents(log).connectionRefused('10.9.9.9:1', 'allow-list');
  t.strictSame(lines, []);
});

t.test('with debug off, requests and block events touch neither the session nor the logger', async (t) => {
  let calls = 0;
  const counting: Logger = {
    debug: () => calls++,
    info: () => calls++,
    warn: () => calls++,
    error: () => calls++,
    enabled: (level) => level !== 'debug',
  };
  const untouchable = new Proxy(session(), {
    get: (_target, key) => {
      throw new Error(`read ${String(key)}`);
    },
  });
  const events = logEvents(counting);
  events.requestDone(untouchable, NBD_CMD_WRITE, 0, 4096, 0.001);
  events.copiedUp('/ov/x.cow', 1, 'base');
  events.zeroed('/ov/x.cow', 0, 8);
  events.elided('/ov/x.cow', 0, 8, 'zero');
  events.tlsEstablished(untouchable);
  t.equal(calls, 0, 'nothing logged, no string built from the session');
  events.connectionOpened(session());
  t.equal(calls, 1, 'info events still log');
});

t.test('at error level (-q) connection lines are off too', async (t) => {
  const { lines, log } = capture('error');
  const events = logEvents(log);
  events.connectionOpened(session());
  events.exportChosen(served());
  events.optionRefused(session(), NBD_OPT_GO, NBD_REP_ERR_POLICY, 'no');
  events.connectionClosed(served(), 'bye');
  t.strictSame(lines, []);
});
