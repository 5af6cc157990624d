// The configuration of the nginx the tests and the remote-base bench start (test/helpers/nginx.ts,
// bench/lib/nginx.ts): one process in the foreground (daemon off, master_process off), everything
// it writes (pid, logs, temp dirs) under `dir`, static files from `root` on 127.0.0.1:`port` with
// ETags, plain HTTP or TLS, and an access log of one JSON object per request.

import { join } from 'node:path';

/** One JSON object per line; escape=json logs a missing header as ''. Numbers are left unquoted. */
export const ACCESS_LOG_FORMAT = [
  '{"time":"$time_iso8601","method":"$request_method","uri":"$request_uri","status":$status',
  ',"range":"$http_range","ifMatch":"$http_if_match","ifUnmodifiedSince":"$http_if_unmodified_since"',
  ',"ifRange":"$http_if_range","contentRange":"$sent_http_content_range","etag":"$sent_http_etag"',
  ',"bodyBytesSent":$body_bytes_sent,"requestTime":$request_time',
  ',"connection":$connection,"connectionRequests":$connection_requests}',
].join('');

export interface NginxConfOptions {
  /** The directory served as `/`. */
  readonly root: string;
  /** PEM files: listen with TLS. */
  readonly tls?: { readonly cert: string; readonly key: string };
  /** The bench's: sendfile, 1024 connections, no limit on the requests of a kept-alive connection. */
  readonly throughput?: boolean;
}

/** nginx's conf syntax: a double-quoted string. */
function quoted(value: string): string {
  return `"${value.replace(/["\\]/g, '\\$&')}"`;
}

export function nginxConf(dir: string, port: number, options: NginxConfOptions): string {
  const { tls, throughput = false } = options;
  const listen = `listen 127.0.0.1:${port}${tls === undefined ? '' : ' ssl'};`;
  const tlsLines = tls === undefined ? [] : [`ssl_certificate ${quoted(tls.cert)};`, `ssl_certificate_key ${quoted(tls.key)};`];
  return [
    'daemon off;',
    'master_process off;',
    `pid ${quoted(join(dir, 'nginx.pid'))};`,
    `error_log ${quoted(join(dir, 'error.log'))} notice;`,
    `events { worker_connections ${throughput ? 1024 : 128}; }`,
    'http {',
    '  default_type application/octet-stream;',
    `  client_body_temp_path ${quoted(join(dir, 'client_body'))};`,
    `  proxy_temp_path ${quoted(join(dir, 'proxy'))};`,
    `  fastcgi_temp_path ${quoted(join(dir, 'fastcgi'))};`,
    `  uwsgi_temp_path ${quoted(join(dir, 'uwsgi'))};`,
    `  scgi_temp_path ${quoted(join(dir, 'scgi'))};`,
    `  log_format range_json escape=json '${ACCESS_LOG_FORMAT}';`,
    `  access_log ${quoted(join(dir, 'access.log'))} range_json;`,
    ...(throughput ? ['  sendfile on;', '  keepalive_requests 100000;'] : []),
    '  server {',
    `    ${listen}`,
    ...tlsLines.map((line) => `    ${line}`),
    `    root ${quoted(options.root)};`,
    '    etag on;',
    '  }',
    '}',
    '',
  ].join('\n');
}
