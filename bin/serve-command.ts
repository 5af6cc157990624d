// What `serve` and `run` do with their flags: build the server's configuration (or load the
// --config file), start one process or the primary of --workers N (or, started as one, a
// worker), print where it listens, and stop on signals. Loaded by bin/nbd-cow.ts only when one
// of those commands runs, with the server's code behind it.

import { mkdir, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import type { Command } from 'commander';
import type { reloadFromFile } from '../lib/config/reload.js';
import type { ServerConfig } from '../lib/config/server-config.js';
import { DEFAULT_PORT, defaultOverlayDir } from '../lib/defaults.js';
import { writePatternImage } from '../lib/demo-image.js';
import { createLogger, type LogFormat, type Logger, levelFromEnv } from '../lib/log.js';
import type { RemoteOptions } from '../lib/remote/remote-options.js';
import { shownUrl } from '../lib/remote/remote-url.js';
import type { S3Options } from '../lib/remote/s3-location.js';
import { runWithServer } from '../lib/run-command.js';
import type { ConnectionLimits } from '../lib/server/connection-limits.js';
import type { NamedOverlayOwner, OverlayPolicy } from '../lib/server/exports.js';
import type { ListenAddress } from '../lib/server/listener.js';
import { logEvents } from '../lib/server/log-events.js';
import { notifyReady } from '../lib/server/readiness.js';
import { inheritedListenAddresses } from '../lib/server/socket-activation.js';
import type { TlsMode } from '../lib/server/tls-credentials.js';
import { formatUri } from '../lib/server/uri.js';
import { WORKER_ENV } from '../lib/server/worker-env.js';
import { parseWorkerAddresses, serveAsWorker } from '../lib/server/worker-process.js';
import { startWorkers } from '../lib/server/workers.js';
import { type ServerOptions, serverConfigFromOptions } from '../lib/server-options.js';
import { type RunningServer, startConfiguredServer } from '../lib/start-server.js';
import { fail } from './fail.js';

const DEMO_SIZE = 64 * 1024 * 1024;

/** The flags of serve and run, as commander gives them. */
export interface CliOptions {
  bind: string;
  port: number;
  socket?: string;
  exportName?: string;
  description?: string;
  overlayDir?: string;
  blockSize: number;
  readOnly?: boolean;
  verbose?: boolean;
  quiet?: boolean;
  logFormat: LogFormat;
  maxInFlight?: number;
  overlays: OverlayPolicy;
  allow?: string[];
  maxConnections?: number;
  socketMode?: number;
  socketGroup?: string;
  user?: string;
  group?: string;
  maxOverlaySize?: number;
  maxOverlayDirSize?: number;
  elideBaseMatches?: boolean;
  layer?: string[];
  tls: TlsMode;
  tlsCertificates?: string;
  tlsPsk?: string;
  tlsVerifyPeer?: boolean;
  namedOverlaysOwner: NamedOverlayOwner;
  handshakeTimeout?: number;
  bufferMemory?: number;
  metrics?: { host: string; port: number };
  config?: string;
  workers?: number;
  cacheDir?: string;
  cacheSize?: number;
  prefetch?: boolean;
  remoteTimeout?: number;
  remoteRetries?: number;
  s3Endpoint?: string;
  s3Region?: string;
  s3Profile?: string;
}

/**
 * The server's logger: level from -v / -q, else NBD_COW_LOG, else the configuration file's, else
 * info; format from --log-format when given, else the file's, else text.
 */
function cliLogger(opts: CliOptions, config?: ServerConfig, formatFromCli = true): Logger {
  const level = opts.verbose === true ? 'debug' : opts.quiet === true ? 'error' : levelFromEnv(config?.logLevel ?? 'info');
  const format = formatFromCli ? opts.logFormat : (config?.logFormat ?? opts.logFormat);
  // A worker of --workers N tags its text lines with its pid (pino's JSON carries the pid anyway).
  const tag = process.env[WORKER_ENV] === undefined ? {} : { tag: `worker ${process.pid}` };
  return createLogger(level, undefined, { format, ...tag });
}

function toServerOptions(base: string, opts: CliOptions): Omit<ServerOptions, 'listen'> & { listen: ServerOptions['listen'] } {
  const logger = cliLogger(opts);
  return {
    base,
    listen: opts.socket !== undefined ? { kind: 'unix', path: opts.socket } : { kind: 'tcp', host: opts.bind, port: opts.port },
    blockSize: opts.blockSize,
    readOnly: opts.readOnly === true,
    overlays: opts.overlays,
    logger,
    // Connections, refusals and (with -v) every request, in the log (log-events.ts).
    events: [logEvents(logger)],
    ...(opts.exportName !== undefined ? { exportName: opts.exportName } : {}),
    ...(opts.description !== undefined ? { description: opts.description } : {}),
    ...(opts.overlayDir !== undefined ? { overlayDir: opts.overlayDir } : {}),
    limits: {
      ...(opts.maxInFlight !== undefined ? { maxInFlight: opts.maxInFlight } : {}),
      ...(opts.handshakeTimeout !== undefined ? { handshakeTimeoutMs: opts.handshakeTimeout } : {}),
    },
    namedOverlayOwner: opts.namedOverlaysOwner,
    ...(opts.bufferMemory !== undefined ? { bufferMemory: opts.bufferMemory } : {}),
    ...(opts.maxOverlaySize !== undefined ? { maxOverlaySize: opts.maxOverlaySize } : {}),
    ...(opts.maxOverlayDirSize !== undefined ? { maxOverlayDirSize: opts.maxOverlayDirSize } : {}),
    ...(opts.elideBaseMatches === true ? { elideBaseMatches: true } : {}),
    ...(opts.layer !== undefined ? { layers: opts.layer } : {}),
    ...remoteOptions(opts),
    ...(opts.allow !== undefined ? { allow: opts.allow } : {}),
    ...(opts.maxConnections !== undefined ? { maxConnections: opts.maxConnections } : {}),
    ...(opts.metrics !== undefined ? { metrics: opts.metrics } : {}),
    ...(opts.socketMode !== undefined ? { socketMode: opts.socketMode } : {}),
    ...(opts.socketGroup !== undefined ? { socketGroup: opts.socketGroup } : {}),
    ...(opts.user !== undefined ? { user: opts.user } : {}),
    ...(opts.group !== undefined ? { group: opts.group } : {}),
    tls: {
      mode: opts.tls,
      ...(opts.tlsCertificates !== undefined ? { certificates: opts.tlsCertificates } : {}),
      ...(opts.tlsPsk !== undefined ? { pskFile: opts.tlsPsk } : {}),
      ...(opts.tlsVerifyPeer === true ? { verifyPeer: true } : {}),
    },
  };
}

/** The --s3-* flags, as RemoteOptions.s3 when any is given. */
function s3Options(opts: CliOptions): { s3?: S3Options } {
  const s3: S3Options = {
    ...(opts.s3Endpoint !== undefined ? { endpoint: opts.s3Endpoint } : {}),
    ...(opts.s3Region !== undefined ? { region: opts.s3Region } : {}),
    ...(opts.s3Profile !== undefined ? { profile: opts.s3Profile } : {}),
  };
  return Object.keys(s3).length === 0 ? {} : { s3 };
}

/** The remote-base flags, as ServerOptions.remote when any is given. */
function remoteOptions(opts: CliOptions): { remote?: RemoteOptions } {
  const remote: RemoteOptions = {
    ...(opts.cacheDir !== undefined ? { cacheDir: resolve(opts.cacheDir) } : {}),
    ...(opts.cacheSize !== undefined ? { cacheSize: opts.cacheSize } : {}),
    ...(opts.prefetch === true ? { prefetch: true } : {}),
    ...(opts.remoteTimeout !== undefined ? { timeoutMs: opts.remoteTimeout } : {}),
    ...(opts.remoteRetries !== undefined ? { retries: opts.remoteRetries } : {}),
    ...s3Options(opts),
  };
  return Object.keys(remote).length === 0 ? {} : { remote };
}

/** The demo image served when no base is given: made once, deterministic. */
async function demoImage(): Promise<string> {
  const dir = join(tmpdir(), 'nbd-cow-demo');
  const path = join(dir, 'demo.img');
  await mkdir(dir, { recursive: true });
  const existing = await stat(path).catch(() => null);
  if (existing?.size !== DEMO_SIZE) {
    process.stderr.write(`nbd-cow: no base given; writing a ${DEMO_SIZE >> 20} MiB demo image to ${path}\n`);
    await writePatternImage(path, DEMO_SIZE);
  }
  return path;
}

/** The serve options that --config replaces, by commander's attribute name. */
const CONFIG_ONLY_OK = new Set(['config', 'verbose', 'quiet', 'logFormat', 'maxInFlight', 'workers']);
/** The serve options that say where to listen: systemd's sockets replace them. */
const LISTEN_OPTIONS = new Set(['bind', 'port', 'socket', 'socketMode', 'socketGroup']);

/** The flag a commander attribute name comes from (`port` → `--port`). */
function flagOf(cmd: Command, name: string): string {
  return cmd.options.find((o) => o.attributeName() === name)?.long ?? name;
}

/** Throw for the first option given on the command line that `allowed` does not take. */
function refuseCliOptions(cmd: Command, opts: CliOptions, refused: (name: string) => boolean, why: string): void {
  for (const name of Object.keys(opts)) {
    if (cmd.getOptionValueSource(name) === 'cli' && refused(name)) throw new Error(`${flagOf(cmd, name)} ${why}`);
  }
}

/** What `serve` runs: the file's configuration with --config, else the flags' one export. */
async function serveConfiguration(
  cmd: Command,
  base: string | undefined,
  opts: CliOptions,
): Promise<{ config: ServerConfig; log: Logger }> {
  if (opts.config === undefined) {
    const options = toServerOptions(base ?? (await demoImage()), opts);
    return { config: serverConfigFromOptions(options), log: options.logger ?? cliLogger(opts) };
  }
  if (base !== undefined) throw new Error("a base image cannot be given with --config: the file names each export's base");
  refuseCliOptions(
    cmd,
    opts,
    (name) => !CONFIG_ONLY_OK.has(name),
    'cannot be used with --config: set it in the file (doc/config.md)',
  );
  // Loaded only here: its YAML parser is about 45 ms and 8 MiB that a server without a file never needs.
  const { loadConfigFile } = await import('../lib/config/config-file.js');
  const config = await loadConfigFile(opts.config);
  return { config, log: cliLogger(opts, config, cmd.getOptionValueSource('logFormat') === 'cli') };
}

export async function serve(cmd: Command, base: string | undefined, opts: CliOptions): Promise<void> {
  // Read (and cleared from the environment) first, before anything can spawn a child.
  const inherited = inheritedListenAddresses();
  if (inherited !== null) {
    refuseCliOptions(
      cmd,
      opts,
      (name) => LISTEN_OPTIONS.has(name),
      'cannot be used under socket activation: systemd gives the sockets',
    );
  }
  const { config: configured, log } = await serveConfiguration(cmd, base, opts);
  // With a file only (the module comes with the file's parser), and before anything starts,
  // so the SIGHUP handler is in place as soon as the server is.
  const reload: Reload | null =
    opts.config === undefined ? null : { path: opts.config, reload: (await import('../lib/config/reload.js')).reloadFromFile };
  let config = configured;
  if (inherited !== null) {
    if (opts.config !== undefined)
      log.info(`socket activation: serving the ${inherited.length} socket(s) systemd passed, not the file's listen:`);
    config = { ...config, listen: inherited.map((address) => ({ address })) };
  }
  const workerAddresses = process.env[WORKER_ENV];
  if (workerAddresses !== undefined) return serveWorker(config, log, reload, opts, parseWorkerAddresses(workerAddresses));
  if ((opts.workers ?? 1) > 1) return servePrimary(config, log, opts);
  const server = await startConfiguredServer(config, { log, events: [logEvents(log)], ...runtimeLimits(opts) });
  printUris(config, server);
  if (reload !== null) {
    for (const exp of config.exports)
      log.info(`export "${exp.name}": ${shownUrl(exp.base)}${exp.readOnly ? ' (read-only)' : ''}`);
    reloadOnSighup(server, reload, log);
  }
  tellSystemdReady(`serving ${server.uri}`, log);
  stopOnSignals(() => server.stop());
}

/** One URI a listener (the first export's), then the metrics URL, on stdout. */
function printUris(
  config: ServerConfig,
  server: { uri: string; addresses: readonly ListenAddress[]; metricsUri: string | null },
): void {
  const first = config.exports[0];
  for (const [i, address] of server.addresses.entries()) {
    process.stdout.write(`${i === 0 ? server.uri : formatUri(address, first?.name ?? '', server.uri.startsWith('nbds'))}\n`);
  }
  if (server.metricsUri !== null) process.stdout.write(`${server.metricsUri}\n`);
}

/** The configuration file, and lib/config/reload.ts's reloadFromFile (loaded only with a file). */
interface Reload {
  readonly path: string;
  readonly reload: typeof reloadFromFile;
}

/** SIGHUP: reload the configuration file into `server`, one reload after the other. */
function reloadOnSighup(server: RunningServer, { path, reload }: Reload, log: Logger): void {
  let reloading = Promise.resolve(true);
  process.on('SIGHUP', () => {
    log.info(`SIGHUP: reloading ${path}`);
    reloading = reloading.then(() => reload(server, path, log));
  });
}

function tellSystemdReady(status: string, log: Logger): void {
  notifyReady({ status }).catch((err: unknown) => {
    log.warn(`could not tell systemd the server is ready: ${err instanceof Error ? err.message : String(err)}`);
  });
}

/** The limits the flags give (beside a configuration too), for startConfiguredServer's runtime. */
function runtimeLimits(opts: CliOptions): { limits?: Partial<ConnectionLimits> } {
  if (opts.maxInFlight === undefined && opts.handshakeTimeout === undefined) return {};
  return {
    limits: {
      ...(opts.maxInFlight !== undefined ? { maxInFlight: opts.maxInFlight } : {}),
      ...(opts.handshakeTimeout !== undefined ? { handshakeTimeoutMs: opts.handshakeTimeout } : {}),
    },
  };
}

/** SIGINT/SIGTERM: `stop`, then exit 0 (1 if it fails); a second signal exits at once. */
function stopOnSignals(stop: () => Promise<void>): void {
  let signals = 0;
  const onSignal = (): void => {
    if (++signals > 1) process.exit(1);
    stop().then(
      () => process.exit(0),
      (err: unknown) => fail(err),
    );
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
}

/** The primary of --workers N: bind, start the workers, hand them connections (lib/server/workers.ts). */
async function servePrimary(config: ServerConfig, log: Logger, opts: CliOptions): Promise<void> {
  const workers = await startWorkers(config, {
    workers: opts.workers ?? 1,
    log,
    script: process.argv[1] as string,
    args: process.argv.slice(2),
    overlayDirs: config.exports.filter((e) => !e.readOnly).map((e) => e.overlayDir ?? defaultOverlayDir()),
  });
  printUris(config, workers);
  log.info(`serving with ${workers.pids.length} worker processes: ${workers.pids.join(', ')}`);
  if (opts.config !== undefined) {
    process.on('SIGHUP', () => {
      log.info('SIGHUP: each worker reloads the configuration file');
      workers.reload();
    });
  }
  tellSystemdReady(`serving ${workers.uri} with ${workers.pids.length} workers`, log);
  stopOnSignals(() => workers.stop());
}

/** One worker of --workers N: serve what the primary hands over (lib/server/worker-process.ts). */
async function serveWorker(
  config: ServerConfig,
  log: Logger,
  reload: Reload | null,
  opts: CliOptions,
  adopted: ListenAddress[],
): Promise<void> {
  const server = await serveAsWorker(config, { log, events: [logEvents(log)], ...runtimeLimits(opts) }, adopted);
  if (reload !== null) reloadOnSighup(server, reload, log);
  stopOnSignals(() => server.stop());
}

export async function run(base: string, command: string[], opts: CliOptions): Promise<void> {
  const [program, ...args] = command;
  if (program === undefined) throw new Error('run needs a command after --');
  const options = toServerOptions(base, opts);
  const explicitListen = opts.socket !== undefined || opts.port !== DEFAULT_PORT;
  const { listen, ...rest } = options;
  process.exitCode = await runWithServer(explicitListen ? options : rest, program, args);
}
