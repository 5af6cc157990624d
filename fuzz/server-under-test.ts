// The target: the built CLI (`nbd-cow serve`) as a child process, watched by PID. Its URI line
// gives the port; its stderr goes to a log file, and every line above info level (a warning, an
// error, a crash's stack) to the fuzzer; it is stopped by PID (bench/lib/proc.ts).

import { spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { createInterface } from 'node:readline';
import { alive, startTime, stopPid } from '../bench/lib/proc.js';
import { within } from '../test/helpers/wait.js';

export interface ServeOptions {
  readonly cli: string;
  readonly base: string;
  readonly overlayDir: string;
  readonly pskFile: string;
  readonly handshakeTimeoutS: number;
  /**
   * quiet (-q): errors only. info: warnings too, but the server's log is rate-limited (100 lines a
   * second, lib/log.ts) and fuzzing makes it refuse enough names to pass that, so some go unseen.
   */
  readonly logLevel: 'quiet' | 'info';
  /** Every stderr line is appended here too. */
  readonly logFile: string;
}

export interface LogCounts {
  readonly info: number;
  /** Lines the server did not write (lib/log.ts: more than 100 a second); a warning among them goes unseen. */
  readonly suppressed: number;
}

export interface ExitStatus {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export interface ServerUnderTest {
  readonly pid: number;
  readonly port: number;
  readonly args: readonly string[];
  /** Settles when the process exits. */
  readonly exited: Promise<ExitStatus>;
  /** From /proc: running, and the process this object started (not a recycled pid). */
  isAlive(): boolean;
  /** The 'exit' event came (cheap: no /proc read). */
  hasExited(): boolean;
  /** The stderr lines above info level that arrived since the last call. */
  takeLines(): string[];
  /** Info lines so far (refusals, closes: expected under fuzzing, only counted), and lines the server's rate limit suppressed. */
  logCounts(): LogCounts;
  stop(): Promise<void>;
}

/** Lines kept between two takeLines() calls; past this they are only counted (the log file has them all). */
const MAX_PENDING_LINES = 2000;
/** lib/log.ts writes `nbd-cow: MESSAGE` at info, `nbd-cow: LEVEL: MESSAGE` above it. */
const ABOVE_INFO = /^nbd-cow: (warn|error): /;
const SUPPRESSED = /^nbd-cow: warn: (\d+) log line\(s\) suppressed/;

export function serveArgs(options: ServeOptions): string[] {
  // biome-ignore format: flags and their values side by side
  return [options.cli, 'serve', options.base, '-p', '0', '--overlay-dir', options.overlayDir,
    '--tls', 'on', '--tls-psk', options.pskFile, '--handshake-timeout', String(options.handshakeTimeoutS),
    ...(options.logLevel === 'quiet' ? ['-q'] : [])];
}

export async function startServer(options: ServeOptions): Promise<ServerUnderTest> {
  const args = serveArgs(options);
  // node itself, not the shebang: the pid is the server's own.
  const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  if (child.pid === undefined) throw new Error(`${options.cli} did not start`);
  const pid = child.pid;
  const log = createWriteStream(options.logFile, { flags: 'a' });
  let pending: string[] = [];
  let overflow = 0;
  let info = 0;
  let suppressed = 0;
  createInterface({ input: child.stderr }).on('line', (line) => {
    log.write(`${line}\n`);
    const dropped = SUPPRESSED.exec(line)?.[1];
    if (dropped !== undefined) suppressed += Number(dropped);
    else if (line.startsWith('nbd-cow: ') && !ABOVE_INFO.test(line)) info++;
    else if (pending.length < MAX_PENDING_LINES) pending.push(line);
    else overflow++;
  });
  let hasExited = false;
  const exited = new Promise<ExitStatus>((resolve) =>
    child.once('exit', (code, signal) => {
      hasExited = true;
      resolve({ code, signal });
    }),
  );
  void exited.then(() => log.end());

  const uriLine = new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout }).once('line', resolve);
    void exited.then(({ code, signal }) => reject(new Error(`server exited (${code ?? signal}) before printing its URI`)));
  });
  const uri = await within(uriLine, 30_000, 'the server printing its URI');
  const port = Number(new URL(uri).port);
  const startedAt = startTime(pid);
  return {
    pid,
    port,
    args,
    exited,
    isAlive: () => alive(pid) && startTime(pid) === startedAt,
    hasExited: () => hasExited,
    logCounts: () => ({ info, suppressed }),
    takeLines: () => {
      const lines = overflow > 0 ? [...pending, `(${overflow} more lines: see ${options.logFile})`] : pending;
      pending = [];
      overflow = 0;
      return lines;
    },
    stop: () => stopPid(pid, startedAt, { child }),
  };
}
