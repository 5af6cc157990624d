// `nbd-cow run`: serve a base on a private unix socket, run a command with NBD_URI set (and
// `{uri}` replaced in its arguments), then stop the server, throwing every overlay away, and
// return the command's exit status — nbdkit's --run, for scripted throwaway sessions.

import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type ServerOptions, startServer } from './server-options.js';

export interface RunOptions extends Omit<ServerOptions, 'listen'> {
  readonly listen?: ServerOptions['listen'];
}

/** Exit status convention of shells: 128 + signal number for a command killed by a signal. */
const SIGNAL_NUMBERS: Readonly<Record<string, number>> = { SIGHUP: 1, SIGINT: 2, SIGKILL: 9, SIGTERM: 15 };

export async function runWithServer(options: RunOptions, command: string, args: readonly string[]): Promise<number> {
  const socketDir = await mkdtemp(join(tmpdir(), 'nbd-cow-run-'));
  try {
    const server = await startServer({
      ...options,
      listen: options.listen ?? { kind: 'unix', path: join(socketDir, 'nbd.sock') },
    });
    try {
      const argv = args.map((arg) => arg.split('{uri}').join(server.uri));
      return await runChild(command, argv, { ...process.env, NBD_URI: server.uri });
    } finally {
      await server.stop();
    }
  } finally {
    await rm(socketDir, { recursive: true, force: true });
  }
}

function runChild(command: string, args: string[], env: NodeJS.ProcessEnv): Promise<number> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: 'inherit', env });
    const forward = (signal: NodeJS.Signals): void => {
      child.kill(signal);
    };
    process.on('SIGINT', forward);
    process.on('SIGTERM', forward);
    const cleanup = (): void => {
      process.off('SIGINT', forward);
      process.off('SIGTERM', forward);
    };
    child.on('error', (err: NodeJS.ErrnoException) => {
      cleanup();
      reject(new Error(`cannot run ${command}: ${err.code === 'ENOENT' ? 'command not found' : err.message}`));
    });
    child.on('exit', (code, signal) => {
      cleanup();
      resolve(code ?? 128 + (signal !== null ? (SIGNAL_NUMBERS[signal] ?? 1) : 1));
    });
  });
}
