// The server under test of bench/hostile.ts: `CMD serve BASE -p 0 --overlay-dir DIR [ARGS]`, CMD
// being this checkout's CLI run by node, or HOSTILE_SERVER_CMD (an older checkout's launcher,
// which execs node, so the PID is the server's). Ready once it printed its URI and answered.

import type { ChildProcess } from 'node:child_process';
import { closeSync, mkdirSync, openSync } from 'node:fs';
import { join } from 'node:path';
import type { ListenAddress } from '../../lib/server/listener.js';
import { NbdSession } from '../../test/helpers/raw-nbd/session.js';
import { alive, sleep, spawnLogged, startTime, stopPid, tail } from './proc.js';
import { errorText } from './workloads.js';

export interface ServerUnderTest {
  readonly pid: number;
  /** startTime(pid) at start: the PID is only signalled while it is still this process. */
  readonly startedAt: string | null;
  readonly child: ChildProcess;
  readonly uri: string;
  readonly address: ListenAddress;
  readonly port: number;
  readonly exportName: string;
  readonly logFile: string;
  readonly command: string;
}

export interface ServerStart {
  /** The program and its first arguments, e.g. [node, ROOT/dist/bin/nbd-cow.js]. */
  readonly command: readonly string[];
  /** Flags after the defaults (HOSTILE_SERVER_ARGS). */
  readonly extraArgs: readonly string[];
  readonly base: string;
  readonly size: number;
  /** A new empty directory for this start: overlay dir and log go in it. */
  readonly run: string;
  readonly readyTimeoutMs: number;
}

/** The first stdout line (the URI), or null if the process exits or `ms` pass first. */
function firstLine(child: ChildProcess, ms: number): Promise<string | null> {
  return new Promise((resolve) => {
    let buf = '';
    const timer = setTimeout(() => resolve(null), ms);
    child.stdout?.on('data', (d: Buffer) => {
      buf += d.toString();
      if (buf.includes('\n')) {
        clearTimeout(timer);
        resolve(buf.split('\n')[0] ?? '');
      }
    });
    child.once('exit', () => {
      clearTimeout(timer);
      resolve(null);
    });
  });
}

/** Start the server and wait until a session sees the base's size; throws with the log's tail. */
export async function startServerUnderTest(opts: ServerStart): Promise<ServerUnderTest> {
  const overlayDir = join(opts.run, 'overlay');
  mkdirSync(overlayDir, { recursive: true });
  const logFile = join(opts.run, 'server.log');
  const logFd = openSync(logFile, 'a');
  const [program, ...first] = opts.command;
  if (program === undefined) throw new Error('empty server command');
  const args = [...first, 'serve', opts.base, '-p', '0', '--overlay-dir', overlayDir, ...opts.extraArgs];
  const child = spawnLogged(program, args, { logFd, stdout: 'pipe' });
  closeSync(logFd);
  const pid = child.pid ?? 0;
  const startedAt = startTime(pid);
  const command = [program, ...args].join(' ');
  const fail = async (why: string): Promise<never> => {
    await stopPid(pid, startedAt, { child, graceMs: 2000 });
    throw new Error(`${why}; ${tail(logFile)}`);
  };
  const line = await firstLine(child, opts.readyTimeoutMs);
  if (line === null) return fail(alive(pid) ? 'no URI on stdout' : 'exited during start-up');
  const url = new URL(line.trim());
  const port = Number(url.port);
  const exportName = decodeURIComponent(url.pathname.replace(/^\//, ''));
  const address: ListenAddress = { kind: 'tcp', host: url.hostname, port };
  const deadline = Date.now() + opts.readyTimeoutMs;
  let lastError = 'not answering';
  while (Date.now() < deadline) {
    try {
      const session = await NbdSession.open(address, exportName, { timeoutMs: 3000 });
      const size = session.size;
      await session.disconnect();
      if (size !== opts.size) return fail(`export size ${size}, expected ${opts.size}`);
      return { pid, startedAt, child, uri: line.trim(), address, port, exportName, logFile, command };
    } catch (err) {
      lastError = errorText(err);
      await sleep(50);
    }
  }
  return fail(`not ready: ${lastError}`);
}

/** Stop it by PID (SIGTERM, SIGKILL after `graceMs`); true if it was still running. */
export async function stopServerUnderTest(srv: ServerUnderTest, graceMs: number): Promise<boolean> {
  const wasRunning = alive(srv.pid) && startTime(srv.pid) === srv.startedAt;
  await stopPid(srv.pid, srv.startedAt, { child: srv.child, graceMs });
  return wasRunning;
}
