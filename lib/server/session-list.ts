// The live session list in its two forms: the JSON that GET /sessions serves (status-server.ts),
// and the table `nbd-cow sessions` prints from it, fetched from a running server.

import { get as httpGet } from 'node:http';
import { get as httpsGet } from 'node:https';
import type { OverlayKind, SessionRecord } from './server-events.js';

/** What `nbd-cow sessions` asks when given no URL: the address the README's examples use. */
export const DEFAULT_STATUS_URL = 'http://127.0.0.1:9810';

/** One session as /sessions shows it. */
export interface SessionJson {
  readonly id: number;
  readonly peer: string;
  /** null while negotiating. */
  readonly export: string | null;
  readonly overlay: OverlayKind | null;
  /** ISO 8601, UTC. */
  readonly opened_at: string;
  readonly age_seconds: number;
  readonly requests: number;
  readonly bytes_read: number;
  readonly bytes_written: number;
  /** Data in the connection's overlay (a named overlay's, shared with its other connections). */
  readonly overlay_bytes: number;
  readonly structured_replies: boolean;
  readonly meta_contexts: readonly string[];
  readonly tls: { readonly version: string; readonly cipher: string; readonly identity: string | null } | null;
  /** With --workers above 1: the worker process serving it (ids are numbered per worker). */
  readonly worker?: number;
}

export function toSessionJson(record: SessionRecord, now = Date.now()): SessionJson {
  return {
    id: record.id,
    peer: record.peer,
    export: record.exportName,
    overlay: record.overlay,
    opened_at: new Date(record.openedAt).toISOString(),
    age_seconds: Math.max(0, Math.round((now - record.openedAt) / 100) / 10),
    requests: record.requests,
    bytes_read: record.bytesRead,
    bytes_written: record.bytesWritten,
    overlay_bytes: record.overlayBytes(),
    structured_replies: record.structuredReplies,
    meta_contexts: record.metaContexts,
    tls:
      record.tls === null
        ? null
        : { version: record.tls.protocol, cipher: record.tls.cipher, identity: record.tls.identity ?? null },
  };
}

/** `http://HOST:PORT/sessions` for what the operator typed: a URL, its /metrics, or HOST:PORT. */
export function sessionsUrl(input: string): URL {
  const url = new URL(input.includes('://') ? input : `http://${input}`);
  if (url.pathname === '/' || url.pathname === '') url.pathname = '/sessions';
  else if (url.pathname.endsWith('/metrics')) url.pathname = `${url.pathname.slice(0, -'metrics'.length)}sessions`;
  return url;
}

/** Most bytes of a /sessions body read (1,024 sessions take about 400 KiB). */
const MAX_BODY_BYTES = 16 * 1024 * 1024;

/**
 * The body of GET `url` (the raw JSON); an HTTP error or a dead server is an Error saying so.
 * node:http rather than fetch(): fetch refuses the WHATWG "bad ports" (6000, 6665–6669, 10080…)
 * and hides the socket error's code.
 */
export function fetchSessions(url: URL, timeoutMs = 10_000): Promise<string> {
  return new Promise((resolve, reject) => {
    // https: for a status endpoint behind a TLS proxy.
    const req = (url.protocol === 'https:' ? httpsGet : httpGet)(url, { timeout: timeoutMs, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        body += chunk;
        if (body.length > MAX_BODY_BYTES) req.destroy(new Error(`more than ${MAX_BODY_BYTES} bytes`));
      });
      res.on('end', () => {
        if (res.statusCode === 200) resolve(body);
        else reject(new Error(`${url.href}: HTTP ${res.statusCode ?? '?'} ${body.trim().slice(0, 200)}`));
      });
      res.on('error', (err) => reject(new Error(`${url.href}: ${err.message}`)));
    });
    req.on('timeout', () => req.destroy(new Error(`no answer within ${timeoutMs / 1000} s`)));
    req.on('error', (err: NodeJS.ErrnoException) => reject(new Error(`cannot reach ${url.href}: ${err.code ?? err.message}`)));
  });
}

/** The sessions in a /sessions body; anything else is an Error (the URL may be another service). */
export function parseSessions(body: string, from: string): SessionJson[] {
  let parsed: unknown;
  try {
    parsed = JSON.parse(body);
  } catch {
    throw new Error(`${from} did not answer with JSON: is it an nbd-cow --metrics address?`);
  }
  if (!Array.isArray(parsed) || !parsed.every((s) => typeof s === 'object' && s !== null && 'id' in s && 'peer' in s)) {
    throw new Error(`${from} did not answer with a session list`);
  }
  return parsed as SessionJson[];
}

const COLUMNS = ['ID', 'PEER', 'EXPORT', 'OVERLAY', 'AGE', 'REQUESTS', 'READ', 'WRITTEN', 'OVERLAY DATA', 'TLS'] as const;
/** Columns aligned to the right: the numbers. */
const RIGHT = new Set<string>(['ID', 'AGE', 'REQUESTS', 'READ', 'WRITTEN', 'OVERLAY DATA']);

/** A table of `sessions`, one line each under a header, columns padded to their widest cell. */
export function formatSessionTable(sessions: readonly SessionJson[]): string {
  if (sessions.length === 0) return 'no sessions\n';
  const rows = sessions.map((s) => [
    s.worker === undefined ? String(s.id) : `${s.worker}.${s.id}`,
    s.peer,
    s.export ?? '(negotiating)',
    s.overlay ?? '-',
    formatAge(s.age_seconds),
    String(s.requests),
    formatBytes(s.bytes_read),
    formatBytes(s.bytes_written),
    formatBytes(s.overlay_bytes),
    s.tls === null ? '-' : `${s.tls.version}${s.tls.identity === null ? '' : ` ${s.tls.identity}`}`,
  ]);
  const widths = COLUMNS.map((title, i) => Math.max(title.length, ...rows.map((row) => (row[i] ?? '').length)));
  const line = (cells: readonly string[]): string =>
    cells
      .map((cell, i) => {
        const width = widths[i] ?? 0;
        return RIGHT.has(COLUMNS[i] ?? '') ? cell.padStart(width) : cell.padEnd(width);
      })
      .join('  ')
      .trimEnd();
  return `${[line(COLUMNS), ...rows.map(line)].join('\n')}\n`;
}

/** 1536 → `1.5 KiB`; bytes below 1 KiB as they are. */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return unit === 0 ? `${bytes} B` : `${value.toFixed(1)} ${units[unit]}`;
}

/** 75 → `1m15s`, 7300 → `2h01m`, 12.3 → `12s`. */
export function formatAge(seconds: number): string {
  const s = Math.floor(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}
