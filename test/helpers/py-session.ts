// python3-libnbd sessions (nbd_session.py): one long-lived Python process per session, driven
// by JSON lines, so a test can hold several libnbd handles and interleave their requests.

import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { Test } from 'tap';
import { pythonWithNbd } from './clients.js';
import { ROOT } from './processes.js';

export const HELPERS = fileURLToPath(new URL('./', import.meta.url));

export interface PyReply {
  readonly ok: boolean;
  readonly error?: string;
  readonly errno?: number;
  /** connect, info */
  readonly size?: number;
  /** info: one flag per libnbd can_* / is_* query */
  readonly can_multi_conn?: boolean;
  /** info: context name → negotiated; block_status: context name → [length, flags] pairs */
  readonly contexts?: unknown;
  /** pread: base64 */
  readonly data?: string;
  /** sha256: hex digest of the whole export */
  readonly sha256?: string;
  /** pwrite_file: bytes sent as WRITE and as WRITE_ZEROES */
  readonly written?: number;
  readonly zeroed?: number;
  readonly [key: string]: unknown;
}

export interface PySession {
  /** Send one request and wait for its reply (errors come back as { ok: false }). */
  call(request: Record<string, unknown>): Promise<PyReply>;
  /** Like call, but throws unless the reply is ok. */
  ok(request: Record<string, unknown>): Promise<PyReply>;
  /** The bytes of a pread on connection `h` (throws unless the reply is ok). */
  pread(h: string, offset: number, length: number): Promise<Buffer>;
  /** Close stdin (the script shuts its connections down) and wait for it to exit. */
  end(): Promise<number | null>;
}

/** Start a python3-libnbd session process; killed in t.teardown. */
export function pySession(t: Test, timeoutMs = 120_000): PySession {
  const python = pythonWithNbd();
  if (python === undefined) throw new Error('python3-libnbd is not installed');
  const child = spawn(python, [join(HELPERS, 'nbd_session.py')], { cwd: ROOT, stdio: ['pipe', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  const safety = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
  void exited.then(() => clearTimeout(safety));
  t.teardown(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exited;
    }
  });
  const waiting: Array<(reply: PyReply) => void> = [];
  createInterface({ input: child.stdout }).on('line', (line) => {
    const resolve = waiting.shift();
    resolve?.(JSON.parse(line) as PyReply);
  });
  void exited.then((code) => {
    for (const resolve of waiting.splice(0)) {
      resolve({ ok: false, error: `nbd_session.py exited (${code}); stderr: ${stderr}` });
    }
  });
  const call = (request: Record<string, unknown>): Promise<PyReply> =>
    new Promise((resolve) => {
      waiting.push(resolve);
      child.stdin?.write(`${JSON.stringify(request)}\n`);
    });
  const ok = async (request: Record<string, unknown>): Promise<PyReply> => {
    const reply = await call(request);
    if (!reply.ok) throw new Error(`${String(request['op'])} failed: ${reply.error ?? '?'}`);
    return reply;
  };
  return {
    call,
    ok,
    pread: async (h, offset, length) => Buffer.from((await ok({ op: 'pread', h, offset, length })).data as string, 'base64'),
    end: () => {
      child.stdin?.end();
      return exited;
    },
  };
}
