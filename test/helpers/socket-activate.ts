// A command started the way systemd starts a socket-activated service, by systemd-socket-activate
// (Debian's systemd package): it binds the sockets, waits for the first connection, then execs
// the command (same pid) with LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES. Stopped by that pid in
// t.teardown.

import { type ChildProcess, spawn } from 'node:child_process';
import type { Test } from 'tap';
import { which } from './clients.js';
import { freePort, pidOf, ROOT, stopperOf } from './processes.js';
import { TimeoutError, waitFor } from './wait.js';

export const SOCKET_ACTIVATE = 'systemd-socket-activate';

/** Safety net: a process still running after this long is killed. */
const PROCESS_TIMEOUT_MS = 240_000;
/** systemd-socket-activate takes no port 0: a probed free port may be taken in between; try again. */
const PORT_ATTEMPTS = 5;

export interface ActivateOptions {
  /** Listen on 127.0.0.1:PORT, PORT a free (TCP) one picked here: the first socket (fd 3). */
  readonly tcp?: boolean;
  /** Unix socket paths to listen on, after the TCP one. */
  readonly unixPaths?: readonly string[];
  /** --datagram: every socket is a datagram socket (UDP for `tcp`). */
  readonly datagram?: boolean;
  /** --fdname: one name per socket, in order. */
  readonly fdnames?: readonly string[];
  readonly command: string;
  readonly args: readonly string[];
  /**
   * Variables for the command, passed with --setenv: systemd-socket-activate gives it only
   * TERM, PATH, USER and HOME of its own environment, besides LISTEN_*.
   */
  readonly setenv?: Readonly<Record<string, string>>;
}

export interface Activated {
  /** systemd-socket-activate's pid, the command's once it runs (it execs). */
  readonly pid: number;
  readonly child: ChildProcess;
  /** The TCP port, or 0 without `tcp`. */
  readonly port: number;
  stdout(): string;
  stderr(): string;
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Send `signal` (SIGTERM by default) to the pid and wait for the exit. */
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

/** Whether systemd-socket-activate is installed (the Debian systemd package). */
export function haveSocketActivate(): boolean {
  return which(SOCKET_ACTIVATE) !== undefined;
}

/** Start `command` under systemd-socket-activate once its sockets listen; the command starts at the first connection. */
export async function socketActivate(t: Test, options: ActivateOptions): Promise<Activated> {
  for (let attempt = 1; ; attempt++) {
    const port = options.tcp === true ? await freePort() : 0;
    const started = start(t, options, port);
    try {
      await waitForSockets(started, (options.tcp === true ? 1 : 0) + (options.unixPaths?.length ?? 0));
      return started;
    } catch (err) {
      await started.stop('SIGKILL');
      if (!started.stderr().includes('Address already in use') || attempt >= PORT_ATTEMPTS) throw err;
    }
  }
}

function start(t: Test, options: ActivateOptions, port: number): Activated {
  const listen = [...(options.tcp === true ? [`127.0.0.1:${port}`] : []), ...(options.unixPaths ?? [])];
  const argv = [
    ...listen.map((address) => `--listen=${address}`),
    ...(options.datagram === true ? ['--datagram'] : []),
    ...Object.entries(options.setenv ?? {}).map(([name, value]) => `--setenv=${name}=${value}`),
    ...(options.fdnames !== undefined ? [`--fdname=${options.fdnames.join(':')}`] : []),
    '--',
    options.command,
    ...options.args,
  ];
  const child = spawn(SOCKET_ACTIVATE, argv, { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (s: string) => (stdout += s));
  child.stderr?.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => {
    child.on('close', (code, signal) => resolve({ code, signal }));
  });
  const safety = setTimeout(() => child.kill('SIGKILL'), PROCESS_TIMEOUT_MS);
  void exited.then(() => clearTimeout(safety));
  const pid = pidOf(child);
  const stop = stopperOf(child, exited);
  t.teardown(() => stop());
  return { pid, child, port, stdout: () => stdout, stderr: () => stderr, exited, stop };
}

/** Until systemd-socket-activate said "Listening on … as N." for each socket; it exiting first fails. */
async function waitForSockets(started: Activated, count: number): Promise<void> {
  let gone = false;
  void started.exited.then(() => (gone = true));
  try {
    await waitFor(
      () => gone || (started.stderr().match(/^Listening on .* as \d+\.$/gm)?.length ?? 0) >= count,
      'sockets',
      10_000,
    );
  } catch (err) {
    if (err instanceof TimeoutError) throw new Error(`${SOCKET_ACTIVATE} did not listen in 10 s: ${started.stderr()}`);
    throw err;
  }
  if (gone) throw new Error(`${SOCKET_ACTIVATE} exited: ${started.stderr().trim()}`);
}
