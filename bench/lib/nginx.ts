// nginx on 127.0.0.1 serving a directory, for bench/remote.ts: the configuration of
// test/helpers/nginx.ts without tap (one process: daemon off, master_process off; conf, pid,
// logs and temp paths in a directory of the bench's WORK; a JSON access log with the Range asked
// and the body bytes sent), its PID registered and stopped by PID. What the origin sent over a
// stretch of the run is read from the access log: mark() before, since(mark) after.

import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { join } from 'node:path';
import { nginxConf } from '../../test/helpers/nginx-conf.js';
import { freePort } from '../../test/helpers/processes.js';
import { alive, registerPid, sleep, startTime, stopPid } from './proc.js';

/** One request as nginx logged it ('' for a header the request or answer did not have). */
export interface AccessLogEntry {
  readonly method: string;
  readonly status: number;
  /** The request's Range header. */
  readonly range: string;
  /** The answer's Content-Range (`bytes FIRST-LAST/SIZE` on a 206). */
  readonly contentRange: string;
  /** $body_bytes_sent: body bytes sent, headers not counted (less than asked if the client went away). */
  readonly bodyBytesSent: number;
  readonly requestTime: number;
  readonly connection: number;
}

/** What the origin sent for a stretch of the run. */
export interface OriginTraffic {
  readonly requests: number;
  /** GETs answered 206 (ranges) or 200 (the whole file). */
  readonly image_requests: number;
  /** Body bytes of those answers. */
  readonly bytes: number;
  /** nbd-cow's probe at start (`Range: bytes=0-0`, one byte): in requests and bytes, not in what follows. */
  readonly probe_requests: number;
  /** Bytes of the image the other answers covered, each byte counted once. */
  readonly distinct_bytes: number;
  /** Their body bytes − distinct_bytes: bytes the origin sent more than once (the probe's byte not counted). */
  readonly duplicate_bytes: number;
  /** The other requests, by status ('412', …) or method and status ('HEAD 200'). */
  readonly other_statuses: Readonly<Record<string, number>>;
  /** nginx connections those requests came on. */
  readonly connections: number;
}

export interface Nginx {
  readonly pid: number;
  readonly port: number;
  /** The URL of a file in the served directory. */
  url(name: string): string;
  /** Where the access log is now (its size in bytes): give it to since(). */
  mark(): number;
  /** The requests logged after `mark`, once the log has stopped growing for 100 ms (at most 2 s). */
  since(mark: number): Promise<AccessLogEntry[]>;
  stop(): Promise<void>;
}

/** The nginx binary: /usr/sbin/nginx, or nginx on PATH; null when not installed. */
export function nginxBinary(): string | null {
  if (existsSync('/usr/sbin/nginx')) return '/usr/sbin/nginx';
  for (const dir of (process.env['PATH'] ?? '').split(':')) {
    if (dir && existsSync(join(dir, 'nginx'))) return join(dir, 'nginx');
  }
  return null;
}

const tcpAccepts = (port: number): Promise<boolean> =>
  new Promise((resolve) => {
    const socket = connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });

/**
 * Start nginx serving `root` on a free port of 127.0.0.1, everything it writes in `dir`. Resolves
 * once it listens; `onStarted` gets the process at once (so a signal meanwhile can stop it).
 */
export async function startNginx(dir: string, root: string, onStarted: (child: ChildProcess) => void): Promise<Nginx> {
  const binary = nginxBinary();
  if (binary === null) throw new Error('nginx not found (make bench-remote installs it)');
  mkdirSync(dir, { recursive: true });
  const accessLog = join(dir, 'access.log');
  const errorLog = join(dir, 'error.log');
  for (let attempt = 1; ; attempt++) {
    const port = await freePort();
    const conf = join(dir, 'nginx.conf');
    writeFileSync(conf, nginxConf(dir, port, { root, throughput: true }));
    const child = spawn(binary, ['-p', `${dir}/`, '-c', conf, '-e', errorLog], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr?.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    let failed: Error | null = null;
    child.once('error', (err) => (failed = err));
    const pid = child.pid ?? 0;
    if (pid) registerPid(pid);
    onStarted(child);
    const startedAt = startTime(pid);
    const deadline = Date.now() + 10_000;
    let listening = false;
    while (!listening) {
      if (failed !== null) throw new Error(`${binary} did not start: ${(failed as Error).message}`);
      if (child.exitCode !== null || child.signalCode !== null || !alive(pid)) break;
      if (await tcpAccepts(port)) listening = true;
      else if (Date.now() > deadline) {
        await stopPid(pid, startedAt, { child });
        throw new Error(`nginx did not listen on ${port} within 10 s: ${stderr.trim()}`);
      } else await sleep(20);
    }
    if (!listening) {
      const text = `${stderr}${existsSync(errorLog) ? readFileSync(errorLog, 'utf8') : ''}`;
      if (/Address already in use/.test(text) && attempt < 5) continue;
      throw new Error(`nginx exited before listening: ${text.trim().slice(-1000)}`);
    }
    const size = (): number => {
      try {
        return statSync(accessLog).size;
      } catch {
        return 0;
      }
    };
    return {
      pid,
      port,
      url: (name) => `http://127.0.0.1:${port}/${encodeURIComponent(name)}`,
      mark: size,
      since: async (mark) => {
        let last = -1;
        for (let i = 0; i < 20 && size() !== last; i++) {
          last = size();
          await sleep(100);
        }
        const text = readFileSync(accessLog).subarray(mark).toString('utf8');
        return text
          .split('\n')
          .filter((line) => line !== '')
          .map((line) => JSON.parse(line) as AccessLogEntry);
      },
      stop: () => stopPid(pid, startedAt, { child }),
    };
  }
}

/** Bytes the entries' answers covered: each 206's `Content-Range` start (0 for a 200) and its body bytes. */
export function originTraffic(entries: readonly AccessLogEntry[]): OriginTraffic {
  const spans: Array<[number, number]> = [];
  const other: Record<string, number> = {};
  let bytes = 0;
  let probes = 0;
  let probeBytes = 0;
  for (const e of entries) {
    if (e.method === 'GET' && (e.status === 206 || e.status === 200)) {
      const m = /^bytes (\d+)-\d+\//.exec(e.contentRange);
      const start = e.status === 206 ? Number(m?.[1] ?? Number.NaN) : 0;
      if (Number.isNaN(start)) throw new Error(`a 206 without a Content-Range nginx logged: ${JSON.stringify(e)}`);
      bytes += e.bodyBytesSent;
      if (e.range === 'bytes=0-0') {
        probes++;
        probeBytes += e.bodyBytesSent;
      } else if (e.bodyBytesSent > 0) spans.push([start, start + e.bodyBytesSent]);
    } else {
      const key = e.method === 'GET' ? String(e.status) : `${e.method} ${e.status}`;
      other[key] = (other[key] ?? 0) + 1;
    }
  }
  spans.sort((a, b) => a[0] - b[0]);
  let distinct = 0;
  let end = -1;
  for (const [from, to] of spans) {
    if (to <= end) continue;
    distinct += to - Math.max(from, end);
    end = to;
  }
  return {
    requests: entries.length,
    image_requests: entries.length - Object.values(other).reduce((a, b) => a + b, 0),
    bytes,
    probe_requests: probes,
    distinct_bytes: distinct,
    duplicate_bytes: bytes - probeBytes - distinct,
    other_statuses: other,
    connections: new Set(entries.map((e) => e.connection)).size,
  };
}
