// The server under test as a real process: the built CLI started with `serve`, its URI line
// awaited, stopped by its own pid in t.teardown; `runCli` for one-shot commands.

import { type ChildProcess, spawn } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { Test } from 'tap';
import { type BaseGuard, guardBase, makePatternBase } from './bases.js';
import { pidOf, ROOT, type RunOptions, type RunResult, run, stopperOf } from './processes.js';
import { waitFor } from './wait.js';

/**
 * The CLI under test: the built dist/bin/nbd-cow.js, started through its `#!/usr/bin/env node`
 * line as an installed nbd-cow is. NBD_COW_CLI overrides it (e.g. an installed nbd-cow).
 */
export const CLI = process.env['NBD_COW_CLI'] ?? join(ROOT, 'dist', 'bin', 'nbd-cow.js');

/** Safety net: a server still running after this long is killed. */
const SERVER_TIMEOUT_MS = 240_000;

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
 * t.match the server's stderr against `pattern` once the pattern shows up there (or after `ms`):
 * a line the server logs while it answers a client can reach this process after the client has
 * its answer, since stderr is a pipe of its own.
 */
export async function matchStderr(
  t: Test,
  server: Pick<ServerProcess, 'stderr'>,
  pattern: RegExp,
  message = `the server's stderr matches ${pattern}`,
  ms = 5000,
): Promise<void> {
  await waitFor(() => pattern.test(server.stderr()), `${pattern} on the server's stderr`, ms).catch(() => undefined);
  t.match(server.stderr(), pattern, message);
}

/**
 * Start `nbd-cow serve BASE ARGS…` (`cli`, CLI by default) and wait for the URI line on stdout.
 * Pass `-p 0` or `-k PATH` in `args` (this adds `-p 0` unless -p/-k is there). Stopped in t.teardown.
 */
export function startServe(t: Test, base: string, args: readonly string[] = [], cli = CLI): Promise<ServerProcess> {
  const hasListen = args.some((a) => a === '-p' || a === '--port' || a === '-k' || a === '--socket');
  return startCliServer(t, ['serve', base, ...(hasListen ? [] : ['-p', '0']), ...args], cli);
}

/** Start `nbd-cow serve --config FILE ARGS…` and wait for its first URI line; stopped in t.teardown. */
export function startServeConfig(t: Test, configFile: string, args: readonly string[] = []): Promise<ServerProcess> {
  return startCliServer(t, ['serve', '--config', configFile, ...args], CLI);
}

async function startCliServer(t: Test, argv: readonly string[], cli: string): Promise<ServerProcess> {
  // The kernel runs the shebang's /usr/bin/env, which execs node: the pid is the server's own.
  const child = spawn(cli, argv, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on('exit', (code, signal) => resolve({ code, signal }));
    // A CLI that could not be started (EACCES, ENOENT) never exits: fail now, not at the safety timeout.
    child.once('error', (err) => {
      if (child.pid !== undefined) return;
      stderr += `cannot start ${cli}: ${err.message}`;
      resolve({ code: null, signal: null });
    });
  });
  const safety = setTimeout(() => child.kill('SIGKILL'), SERVER_TIMEOUT_MS);
  void exited.then(() => clearTimeout(safety));

  const stop = stopperOf(child, exited);
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

/** `nbd-cow ARGS…` (CLI) to completion (for error cases and `run`). */
export function runCli(args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  return run(CLI, args, options);
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
export async function servePatternBase(t: Test, size: number): Promise<PatternServe> {
  const dir = t.testdir();
  const overlays = join(dir, 'overlays');
  const base = await makePatternBase(dir, size);
  const guard = await guardBase(t, base);
  const server = await startServe(t, base, ['--overlay-dir', overlays]);
  return { dir, overlays, base, guard, server };
}
