// End-to-end helpers: start the built CLI (bin/nbd-cow, i.e. dist/) as a real process, run the
// real NBD clients against it, and drive python3-libnbd sessions (nbd_session.py).
//
// Every process started here has a timeout and is killed in t.teardown, by its own pid.

import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { accessSync, createReadStream, existsSync, constants as fsConstants, readdirSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { delimiter, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { Test } from 'tap';
import { writePatternImage } from '../../lib/demo-image.js';

export const ROOT = fileURLToPath(new URL('../../', import.meta.url));
/** The CLI under test; NBD_COW_CLI overrides it (e.g. an installed nbd-cow). */
export const CLI = process.env['NBD_COW_CLI'] ?? join(ROOT, 'bin', 'nbd-cow');
export const HELPERS = fileURLToPath(new URL('./', import.meta.url));

export type TestLike = Test;

/** Default limit for one client command. */
export const CLIENT_TIMEOUT_MS = 60_000;
/** Safety net: a server still running after this long is killed. */
const SERVER_TIMEOUT_MS = 240_000;

// ---------------------------------------------------------------------------------------------
// Finding the clients

/** Absolute path of `name` on PATH (then in `extraDirs`), or undefined. */
export function which(name: string, extraDirs: readonly string[] = []): string | undefined {
  for (const dir of [...(process.env['PATH'] ?? '').split(delimiter), ...extraDirs]) {
    if (dir === '') continue;
    const path = join(dir, name);
    try {
      accessSync(path, fsConstants.X_OK);
      return path;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** The names in `names` that are not on PATH. */
export function missing(...names: string[]): string[] {
  return names.filter((n) => which(n) === undefined);
}

let pythonCache: string | null | undefined;

/**
 * A python3 interpreter that can `import nbd` (python3-libnbd). A pyenv or venv python3 first
 * on PATH usually cannot, so /usr/bin/python3 is tried too.
 */
export function pythonWithNbd(): string | undefined {
  if (pythonCache !== undefined) return pythonCache ?? undefined;
  pythonCache = null;
  const candidates = [which('python3'), '/usr/bin/python3', '/usr/local/bin/python3'];
  for (const py of candidates) {
    if (py === undefined || !existsSync(py)) continue;
    const r = spawnSync(py, ['-c', 'import nbd'], { timeout: 15_000, stdio: 'ignore' });
    if (r.status === 0) {
      pythonCache = py;
      break;
    }
  }
  return pythonCache ?? undefined;
}

/**
 * Skip the whole test file (plan 0 with a reason) unless every binary is installed, and
 * python3-libnbd too when `python` is set. Returns true when the test can go on.
 */
export function requireClients(t: Test, names: string[], python = false): boolean {
  const absent = missing(...names);
  if (python && pythonWithNbd() === undefined) absent.push('python3-libnbd');
  if (absent.length === 0) return true;
  // In CI the set-up installs every client: a missing one is an install bug, not a skip.
  if (process.env['CI'] !== undefined && process.env['CI'] !== '' && process.env['CI'] !== 'false') {
    t.fail(`not installed: ${absent.join(', ')} (make deps-test installs them)`);
    return false;
  }
  t.plan(0, `not installed: ${absent.join(', ')}`);
  return false;
}

// ---------------------------------------------------------------------------------------------
// Base images

/** Write a pattern base image (lib/demo-image.ts) of `size` bytes; returns its path. */
export async function makePatternBase(dir: string, size: number, name = 'base.img'): Promise<string> {
  const path = join(dir, name);
  await writePatternImage(path, size);
  return path;
}

export interface PatternServe {
  readonly dir: string;
  /** The server's --overlay-dir. */
  readonly overlays: string;
  readonly base: string;
  readonly guard: BaseGuard;
  readonly server: ServerProcess;
}

/** The usual start of an e2e test: a pattern base of `size` bytes, guarded, served by the CLI. */
export async function servePatternBase(t: TestLike, size: number): Promise<PatternServe> {
  const dir = t.testdir();
  const overlays = join(dir, 'overlays');
  const base = await makePatternBase(dir, size);
  const guard = await guardBase(t, base);
  const server = await startServe(t, base, ['--overlay-dir', overlays]);
  return { dir, overlays, base, guard, server };
}

/** Write `size` random bytes (a fresh random image each time); returns its path. */
export async function makeRandomBase(dir: string, size: number, name = 'base.img'): Promise<string> {
  const path = join(dir, name);
  const handle = await open(path, 'w', 0o644);
  try {
    for (let pos = 0; pos < size; pos += 1 << 20) {
      const chunk = randomBytes(Math.min(1 << 20, size - pos));
      await handle.write(chunk, 0, chunk.length, pos);
    }
  } finally {
    await handle.close();
  }
  return path;
}

/** The byte of a striped base at `offset`: 0x40 + the MiB it is in (qemu-io can check it with -P). */
export function stripeByte(offset: number): number {
  return 0x40 + Math.floor(offset / (1 << 20));
}

/** Write a striped base: every MiB filled with one byte, stripeByte(offset). */
export async function makeStripedBase(dir: string, size: number, name = 'base.img'): Promise<string> {
  const path = join(dir, name);
  const handle = await open(path, 'w', 0o644);
  try {
    for (let pos = 0; pos < size; pos += 1 << 20) {
      const chunk = Buffer.alloc(Math.min(1 << 20, size - pos), stripeByte(pos));
      await handle.write(chunk, 0, chunk.length, pos);
    }
  } finally {
    await handle.close();
  }
  return path;
}

export function sha256File(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = createHash('sha256');
    createReadStream(path)
      .on('data', (chunk) => hash.update(chunk))
      .on('error', reject)
      .on('end', () => resolve(hash.digest('hex')));
  });
}

export function sha256(data: Buffer | string): string {
  return createHash('sha256').update(data).digest('hex');
}

export interface BaseGuard {
  /** The base's sha256 when the guard was made. */
  readonly sha256: string;
  /** Assert that the base still has that sha256 (call at the end, after stopping servers). */
  check(): Promise<void>;
}

/** Record the base's sha256 now, to check at the end of a test that writes that it never changed. */
export async function guardBase(t: Test, path: string): Promise<BaseGuard> {
  const before = await sha256File(path);
  return {
    sha256: before,
    check: async () => {
      t.equal(await sha256File(path), before, 'the base image is unchanged (sha256)');
    },
  };
}

/** Files in `dir` (sorted); [] when it does not exist. */
export function listDir(dir: string): string[] {
  return existsSync(dir) ? readdirSync(dir).sort() : [];
}

/**
 * The listing of `dir` once `accept(listing)` holds, polling every 20 ms for up to
 * `timeoutMs` (the server deletes an overlay just after the client disconnects); the last
 * listing if it never does, for the assertion to show.
 */
export async function waitForDir(dir: string, accept: (names: string[]) => boolean, timeoutMs = 10_000): Promise<string[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const names = listDir(dir);
    if (accept(names) || Date.now() > deadline) return names;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

/** The listing of `dir` once it is empty (or after the timeout). */
export function waitForEmptyDir(dir: string, timeoutMs = 10_000): Promise<string[]> {
  return waitForDir(dir, (names) => names.length === 0, timeoutMs);
}

/** A pid that is certainly not running: a child that has exited and been reaped. */
export function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { timeout: 15_000 });
  return Number(r.stdout.toString());
}

// ---------------------------------------------------------------------------------------------
// Running commands

export interface RunResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly timedOut: boolean;
}

export interface RunOptions {
  readonly timeoutMs?: number;
  readonly env?: NodeJS.ProcessEnv;
  readonly input?: string;
  readonly cwd?: string;
}

/** Run a command to completion (killed with SIGKILL after the timeout), capturing its output. */
export function run(command: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      env: options.env ?? process.env,
      cwd: options.cwd ?? ROOT,
      stdio: [options.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout?.setEncoding('utf8').on('data', (s: string) => (stdout += s));
    child.stderr?.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL');
    }, options.timeoutMs ?? CLIENT_TIMEOUT_MS);
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, stdout, stderr, timedOut });
    });
    if (options.input !== undefined) child.stdin?.end(options.input);
  });
}

/** The pid of a child that was spawned; throws when spawning failed (no pid). */
export function pidOf(child: ChildProcess): number {
  if (child.pid === undefined) throw new Error(`${child.spawnfile} did not start`);
  return child.pid;
}

/** A one-line summary of a RunResult for assertion messages. */
export function describeRun(r: RunResult): string {
  const how = r.timedOut ? 'timed out' : r.signal !== null ? `killed by ${r.signal}` : `exit ${r.code}`;
  return `${how}; stderr: ${r.stderr.trim().slice(0, 2000)}`;
}

// ---------------------------------------------------------------------------------------------
// The server under test

export interface ServerProcess {
  readonly uri: string;
  readonly pid: number;
  readonly child: ChildProcess;
  /** Everything the server wrote on stderr so far. */
  stderr(): string;
  /** Resolves with the exit status once the process has exited. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Send `signal` (SIGTERM by default) to the server's pid and wait for it to exit. */
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/**
 * Start `bin/nbd-cow serve BASE ARGS…` and wait for the URI line on stdout. Pass `-p 0` or
 * `-k PATH` in `args` (this adds `-p 0` unless -p/-k is there). Stopped in t.teardown.
 */
export async function startServe(t: TestLike, base: string, args: readonly string[] = []): Promise<ServerProcess> {
  const hasListen = args.some((a) => a === '-p' || a === '--port' || a === '-k' || a === '--socket');
  const argv = ['serve', base, ...(hasListen ? [] : ['-p', '0']), ...args];
  // bin/nbd-cow execs node, so the pid is the server's own.
  const child = spawn(CLI, argv, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on('exit', (code, signal) => resolve({ code, signal }));
  });
  const safety = setTimeout(() => child.kill('SIGKILL'), SERVER_TIMEOUT_MS);
  void exited.then(() => clearTimeout(safety));

  const stop = async (signal: NodeJS.Signals = 'SIGTERM'): Promise<{ code: number | null; signal: NodeJS.Signals | null }> => {
    if (child.exitCode === null && child.signalCode === null && child.pid !== undefined) {
      process.kill(child.pid, signal);
      const killer = setTimeout(() => child.kill('SIGKILL'), 20_000);
      const status = await exited;
      clearTimeout(killer);
      return status;
    }
    return exited;
  };
  t.teardown(() => stop());

  const uri = await new Promise<string>((resolve, reject) => {
    const lines = createInterface({ input: child.stdout });
    const timer = setTimeout(() => reject(new Error(`server printed no URI in 30 s; stderr: ${stderr}`)), 30_000);
    lines.once('line', (line) => {
      clearTimeout(timer);
      resolve(line.trim());
    });
    void exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`server exited (${code ?? signal}) before printing its URI; stderr: ${stderr}`));
    });
  });
  return { uri, pid: pidOf(child), child, stderr: () => stderr, exited, stop };
}

/** `bin/nbd-cow ARGS…` to completion (for error cases and `run`). */
export function runCli(args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  return run(CLI, args, options);
}

// ---------------------------------------------------------------------------------------------
// python3-libnbd sessions (test/helpers/nbd_session.py)

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
export function pySession(t: TestLike, timeoutMs = 120_000): PySession {
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

/** Extents as [length, flags] pairs, with neighbours of equal flags merged. */
export function coalesce(extents: readonly (readonly [number, number])[]): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const [length, flags] of extents) {
    const last = out[out.length - 1];
    if (last !== undefined && last[1] === flags) last[0] += length;
    else out.push([length, flags]);
  }
  return out;
}

/** The status flags at byte `offset` of an extent list that starts at `start`. */
export function flagsAt(extents: readonly (readonly [number, number])[], start: number, offset: number): number | undefined {
  let pos = start;
  for (const [length, flags] of extents) {
    if (offset >= pos && offset < pos + length) return flags;
    pos += length;
  }
  return undefined;
}

/** Bytes of the pattern base at [offset, offset + length), read from the file. */
export { fillPattern, patternByte } from '../../lib/demo-image.js';
