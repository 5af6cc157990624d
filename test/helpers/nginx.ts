// A real nginx serving a directory of static files, for the tests of lib/remote/ (a base image
// read by HTTP Range requests): one process (daemon off, master_process off: it stays the user
// that started it, so a root test reads any root dir and a developer's reads its own files)
// with everything it writes (conf, pid, logs, temp dirs) in a fresh temp dir, plain HTTP or TLS,
// on a free 127.0.0.1 port, its access log in JSON lines; stopped by its pid in t.teardown.
// Without nginx, requireNginx skips the file, or fails it under CI (ci.ts).

import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { mkdtemp, readFile, writeFile } from 'node:fs/promises';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Test } from 'tap';
import { requireAll } from './ci.js';
import { which } from './clients.js';
import { nginxConf } from './nginx-conf.js';
import { type ExitStatus, freePort, pidOf, stopperOf } from './processes.js';
import { within } from './wait.js';

/** One request as nginx logged it. A header the request did not have is ''. */
export interface AccessLogEntry {
  /** $time_iso8601 */
  readonly time: string;
  readonly method: string;
  /** $request_uri: the path and query as the client sent them. */
  readonly uri: string;
  readonly status: number;
  /** The request's Range header. */
  readonly range: string;
  readonly ifMatch: string;
  readonly ifUnmodifiedSince: string;
  readonly ifRange: string;
  /** The response's Content-Range and ETag headers. */
  readonly contentRange: string;
  readonly etag: string;
  /** $body_bytes_sent: body bytes sent, headers not counted. */
  readonly bodyBytesSent: number;
  /** $request_time, in seconds (millisecond resolution). */
  readonly requestTime: number;
  /** $connection (the connection's serial number) and $connection_requests: keep-alive reuse shows here. */
  readonly connection: number;
  readonly connectionRequests: number;
}

export interface NginxOptions {
  /** The directory served as `/`. */
  readonly root: string;
  /** PEM files: listen with TLS. */
  readonly tls?: { readonly cert: string; readonly key: string };
}

export interface Nginx {
  readonly port: number;
  readonly pid: number;
  /** `http://127.0.0.1:PORT` (https with tls). */
  readonly origin: string;
  /** The URL of `name` (a path relative to the root; each segment is percent-encoded). */
  url(name: string): string;
  /** Every request logged so far (nginx logs a request once its response is sent). */
  accessLog(): Promise<AccessLogEntry[]>;
  /** The error log so far. */
  errorLog(): string;
  /** SIGTERM to nginx's pid, then wait (bounded) for it to exit. Idempotent. */
  stop(): Promise<ExitStatus>;
}

const START_TIMEOUT_MS = 10_000;
const STOP_TIMEOUT_MS = 30_000;
const BIND_ATTEMPTS = 5;

/** The nginx binary: /usr/sbin/nginx, or nginx on PATH; undefined when not installed. */
export function nginxBinary(): string | undefined {
  return existsSync('/usr/sbin/nginx') ? '/usr/sbin/nginx' : which('nginx', ['/usr/local/sbin']);
}

/** Go on (true) when nginx is installed; otherwise skip the file, or fail it under CI. Call at top level. */
export function requireNginx(t: Test): boolean {
  return requireAll(t, nginxBinary() === undefined ? ['nginx'] : [], 'make deps-test installs it');
}

/** True once a TCP connection to 127.0.0.1:port is accepted (then closed). */
function tcpAccepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

function pidFileNames(dir: string, pid: number): boolean {
  try {
    return Number(readFileSync(join(dir, 'nginx.pid'), 'utf8').trim()) === pid;
  } catch {
    return false;
  }
}

interface Started {
  readonly child: ChildProcess;
  readonly exited: Promise<ExitStatus>;
}

/**
 * Start nginx on `port`; resolves once it listens (its pid file names it: nginx writes it after
 * binding, and a TCP connect is accepted), or with 'port taken' when it exited failing to bind.
 */
async function startOn(binary: string, dir: string, port: number, options: NginxOptions): Promise<Started | 'port taken'> {
  const conf = join(dir, 'nginx.conf');
  await writeFile(conf, nginxConf(dir, port, options));
  const errorLog = join(dir, 'error.log');
  const child = spawn(binary, ['-p', `${dir}/`, '-c', conf, '-e', errorLog], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.setEncoding('utf8').on('data', (s: string) => (stderr += s));
  const exited = new Promise<ExitStatus>((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  let gone = false;
  void exited.then(() => (gone = true));
  const spawnFailed = new Promise<Error>((resolve) => child.once('error', resolve));
  let failure: Error | undefined;
  void spawnFailed.then((err) => (failure = err));
  const pid = child.pid;
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    if (failure !== undefined) throw new Error(`${binary} did not start: ${failure.message}`);
    if (gone) {
      await exited;
      const log = `${stderr}${existsSync(errorLog) ? readFileSync(errorLog, 'utf8') : ''}`;
      if (/Address already in use/.test(log)) return 'port taken';
      throw new Error(`nginx exited before listening on ${port}: ${log.trim().slice(-2000)}`);
    }
    if (pid !== undefined && pidFileNames(dir, pid) && (await tcpAccepts(port))) return { child, exited };
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`nginx did not listen on ${port} within ${START_TIMEOUT_MS} ms; stderr: ${stderr}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function parseLog(text: string): AccessLogEntry[] {
  return text
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => JSON.parse(line) as AccessLogEntry);
}

// nginx processes still running when this test process exits (a test that crashed before its
// teardown): killed then, so none outlives it.
const running = new Set<number>();
let exitHookSet = false;
function killLeftoversAtExit(pid: number): void {
  running.add(pid);
  if (exitHookSet) return;
  exitHookSet = true;
  process.once('exit', () => {
    for (const p of running) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  });
}

/** Start nginx serving `options.root` (plain HTTP, or TLS with `options.tls`); stopped in t.teardown. */
export async function startNginx(t: Test, options: NginxOptions): Promise<Nginx> {
  const binary = nginxBinary();
  if (binary === undefined) throw new Error('nginx is not installed (call requireNginx at the top of the test file)');
  const dir = await mkdtemp(join(tmpdir(), 'nbd-cow-nginx-'));
  let started: Started | 'port taken' = 'port taken';
  let port = 0;
  for (let attempt = 0; attempt < BIND_ATTEMPTS && started === 'port taken'; attempt++) {
    port = await freePort();
    started = await startOn(binary, dir, port, options).catch((err: unknown) => {
      rmSync(dir, { recursive: true, force: true });
      throw err;
    });
  }
  if (started === 'port taken') {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`nginx found no free port in ${BIND_ATTEMPTS} attempts`);
  }
  const { child, exited } = started;
  const pid = pidOf(child);
  killLeftoversAtExit(pid);
  void exited.then(() => running.delete(pid));
  const signalAndWait = stopperOf(child, exited);
  const stop = (): Promise<ExitStatus> => within(signalAndWait('SIGTERM'), STOP_TIMEOUT_MS, `nginx (pid ${pid}) stopping`);
  t.teardown(async () => {
    await stop();
    rmSync(dir, { recursive: true, force: true });
  });
  const scheme = options.tls === undefined ? 'http' : 'https';
  const origin = `${scheme}://127.0.0.1:${port}`;
  return {
    port,
    pid,
    origin,
    url: (name) => `${origin}/${name.replace(/^\/+/, '').split('/').map(encodeURIComponent).join('/')}`,
    accessLog: async () => parseLog(await readFile(join(dir, 'access.log'), 'utf8').catch(() => '')),
    errorLog: () => (existsSync(join(dir, 'error.log')) ? readFileSync(join(dir, 'error.log'), 'utf8') : ''),
    stop,
  };
}

/** nginx's access log once it stops growing for 25 ms (a request is logged just after its answer is sent); at most 1 s. */
export async function settledAccessLog(nginx: Nginx): Promise<AccessLogEntry[]> {
  let log = await nginx.accessLog();
  for (let i = 0; i < 40; i++) {
    await new Promise((resolve) => setTimeout(resolve, 25));
    const again = await nginx.accessLog();
    if (again.length === log.length) return again;
    log = again;
  }
  return log;
}
