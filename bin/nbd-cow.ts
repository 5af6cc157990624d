#!/usr/bin/env node
// The nbd-cow command line: parse flags into ServerOptions, start the server or the scripted
// `run` mode, translate signals and errors into exit codes. No serving logic lives here.

import { readFileSync } from 'node:fs';
import { mkdir, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { writePatternImage } from '../lib/demo-image.js';
import {
  checkOverlay,
  DEFAULT_BLOCK_SIZE,
  DEFAULT_PORT,
  OVERLAY_POLICIES,
  type OverlayPolicy,
  type ServerOptions,
  startServer,
  validateBlockSize,
} from '../lib/index.js';
import { runWithServer } from '../lib/run-command.js';

const DEMO_SIZE = 64 * 1024 * 1024;

/**
 * The version in the package's own package.json, read at run time two levels above the compiled
 * dist/bin/nbd-cow.js, so an installed copy reports the version it was installed as.
 */
function packageVersion(): string {
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };
  return pkg.version;
}

interface CliOptions {
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
  maxInFlight?: number;
  overlays: OverlayPolicy;
}

function parsePort(value: string): number {
  const port = Number(value);
  if (!/^\d+$/.test(value) || port > 65535) throw new InvalidArgumentError('expected a port number from 0 to 65535');
  return port;
}

function parseSize(value: string): number {
  const match = /^(\d+)([kKmM]?)$/.exec(value);
  if (match === null) throw new InvalidArgumentError('expected a size such as 4096, 64K or 1M');
  const unit = (match[2] ?? '').toLowerCase();
  const size = Number(match[1]) * (unit === 'k' ? 1024 : unit === 'm' ? 1024 * 1024 : 1);
  try {
    validateBlockSize(size);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
  return size;
}

function parsePositive(value: string): number {
  const n = Number(value);
  if (!/^\d+$/.test(value) || n < 1) throw new InvalidArgumentError('expected a positive integer');
  return n;
}

function addServeOptions(cmd: Command): Command {
  return cmd
    .option('-b, --bind <addr>', 'address to listen on', '127.0.0.1')
    .option('-p, --port <n>', 'TCP port (0 picks a free one)', parsePort, DEFAULT_PORT)
    .option('-k, --socket <path>', 'listen on a unix socket instead of TCP')
    .option('-x, --export-name <name>', "export name (default: the base file's name without extension)")
    .option('-D, --description <text>', 'export description shown by nbdinfo')
    .option('--overlay-dir <dir>', 'where overlay files live (default: a directory under the temp dir)')
    .option('--block-size <n>', 'overlay block size, power of two from 512 to 1M', parseSize, DEFAULT_BLOCK_SIZE)
    .option('-r, --read-only', 'serve the base read-only, with no overlay at all')
    .addOption(
      new Option(
        '--overlays <kind>',
        'overlays clients may use: "throwaway" (EXPORT: private, deleted at disconnect), ' +
          '"named" (EXPORT@NAME: kept in the overlay dir, shared by its connections, survives restarts), or both',
      )
        .choices(OVERLAY_POLICIES)
        .default('both'),
    )
    .addOption(new Option('--max-in-flight <n>', 'requests in flight per connection').argParser(parsePositive))
    .option('-v, --verbose', 'log every connection and option')
    .option('-q, --quiet', 'log errors only');
}

function toServerOptions(base: string, opts: CliOptions): Omit<ServerOptions, 'listen'> & { listen: ServerOptions['listen'] } {
  return {
    base,
    listen: opts.socket !== undefined ? { kind: 'unix', path: opts.socket } : { kind: 'tcp', host: opts.bind, port: opts.port },
    blockSize: opts.blockSize,
    readOnly: opts.readOnly === true,
    overlays: opts.overlays,
    logLevel: opts.verbose === true ? 'debug' : opts.quiet === true ? 'error' : 'info',
    ...(opts.exportName !== undefined ? { exportName: opts.exportName } : {}),
    ...(opts.description !== undefined ? { description: opts.description } : {}),
    ...(opts.overlayDir !== undefined ? { overlayDir: opts.overlayDir } : {}),
    ...(opts.maxInFlight !== undefined ? { limits: { maxInFlight: opts.maxInFlight } } : {}),
  };
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

async function serve(base: string | undefined, opts: CliOptions): Promise<void> {
  const server = await startServer(toServerOptions(base ?? (await demoImage()), opts));
  process.stdout.write(`${server.uri}\n`);
  let signals = 0;
  const onSignal = (): void => {
    if (++signals > 1) process.exit(1);
    server.stop().then(
      () => process.exit(0),
      (err: unknown) => fail(err),
    );
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
}

async function run(base: string, command: string[], opts: CliOptions): Promise<void> {
  const [program, ...args] = command;
  if (program === undefined) throw new Error('run needs a command after --');
  const options = toServerOptions(base, opts);
  const explicitListen = opts.socket !== undefined || opts.port !== DEFAULT_PORT;
  const { listen, ...rest } = options;
  process.exitCode = await runWithServer(explicitListen ? options : rest, program, args);
}

function fail(err: unknown): never {
  const message = err instanceof Error ? err.message : String(err);
  process.stderr.write(`nbd-cow: ${message}\n`);
  process.exit(1);
}

const program = new Command('nbd-cow')
  .description('NBD server: one read-only base image; a private throwaway or a named, kept copy-on-write overlay per client')
  .version(packageVersion(), '-V, --version', 'print the version and exit')
  .enablePositionalOptions();

addServeOptions(
  program
    .command('serve')
    .description('serve BASE (or a generated demo image) until SIGINT/SIGTERM')
    .argument('[base]', 'base image (raw); a demo image is generated when omitted'),
).action((base: string | undefined, opts: CliOptions) => serve(base, opts).catch(fail));

addServeOptions(
  program
    .command('run')
    .description('serve BASE on a private socket, run COMMAND with $NBD_URI ({uri} in its arguments), then stop')
    .argument('<base>', 'base image (raw)')
    .argument('<command...>', 'command and arguments, after --'),
).action((base: string, command: string[], opts: CliOptions) => run(base, command, opts).catch(fail));

program
  .command('overlay')
  .description('inspect overlay files')
  .command('check')
  .description(
    "verify an overlay's header, map and base binding; exit 0 clean, 1 repaired, 2 not closed cleanly, " +
      '4 corrupt or made for another base, 8 could not check',
  )
  .argument('<file>', 'overlay file (e.g. OVERLAY_DIR/named-golden@alice.cow)')
  .requiredOption('--base <base>', 'the base image the overlay belongs to')
  .option('--repair', 'make an overlay left by a crash consistent and clean (refuses corruption)')
  .action((file: string, opts: { base: string; repair?: boolean }) =>
    checkOverlay(file, { base: opts.base, repair: opts.repair === true }).then((r) => {
      for (const line of r.lines) process.stdout.write(`${line}\n`);
      process.exitCode = r.exitCode;
    }, fail),
  );

program.parseAsync(process.argv).catch(fail);
