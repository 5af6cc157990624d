// Readiness for systemd's Type=notify (sd_notify(3)): once serving, tell the service manager
// READY=1 (with MAINPID= and a STATUS= line) on the datagram socket named by NOTIFY_SOCKET.
//
// Node cannot send it itself: node:dgram is UDP only, and an AF_UNIX datagram socket needs a
// native module. systemd-notify(1), from the systemd package that NOTIFY_SOCKET implies, sends it
// for us; two things make that sound (systemd-notify(1), systemd >= 246; Debian 12 has 252):
// - attribution: run as root it sends with our pid in SCM_CREDENTIALS (it "pretends to have the
//   PID of the invoking process"), which NotifyAccess=main accepts; after --user it cannot, so
//   the message comes from its own pid and the unit needs NotifyAccess=all;
// - the race of a helper that exits before systemd reads its message (and so cannot be traced to
//   the unit): systemd-notify sends BARRIER=1 with a pipe and waits until systemd has processed
//   everything before it and closed the pipe, so it exits only after READY=1 was taken.
// Checked in test/server/readiness.test.ts against a receiver bound on a temporary NOTIFY_SOCKET.

import { spawn } from 'node:child_process';

/** How long systemd-notify may take (its barrier waits up to 5 s for the service manager). */
const NOTIFY_TIMEOUT_MS = 15_000;

export interface ReadinessOptions {
  /** Where NOTIFY_SOCKET is read (default process.env). */
  readonly env?: NodeJS.ProcessEnv;
  /** A STATUS= line for `systemctl status`, e.g. the URI served. */
  readonly status?: string;
  /** The notifier (default `systemd-notify`, found on PATH). */
  readonly command?: string;
}

/**
 * Send READY=1 (and MAINPID=, STATUS=) when a service manager asked for it (NOTIFY_SOCKET set):
 * 'sent' once it was delivered, 'not-requested' without NOTIFY_SOCKET. Throws one line when
 * systemd-notify is missing, fails or takes too long: the caller logs it (systemd gives up on
 * the service at TimeoutStartSec=). NOTIFY_SOCKET stays set, for later notifications.
 */
export function notifyReady(options: ReadinessOptions = {}): Promise<'sent' | 'not-requested'> {
  const env = options.env ?? process.env;
  const socket = env['NOTIFY_SOCKET'];
  if (socket === undefined || socket === '') return Promise.resolve('not-requested');
  const command = options.command ?? 'systemd-notify';
  const args = ['--ready', `--pid=${process.pid}`, ...(options.status === undefined ? [] : [`--status=${options.status}`])];
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, {
      env: { PATH: env['PATH'] ?? process.env['PATH'] ?? '/usr/bin:/bin', NOTIFY_SOCKET: socket },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    let stderr = '';
    child.stderr?.setEncoding('utf8').on('data', (s: string) => (stderr += s));
    const fail = (why: string): void => reject(new Error(`cannot tell systemd the server is ready: ${why}`));
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      fail(`${command} did not finish in ${NOTIFY_TIMEOUT_MS / 1000} s`);
    }, NOTIFY_TIMEOUT_MS);
    child.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      fail(err.code === 'ENOENT' ? `${command} not found (it comes with systemd)` : err.message);
    });
    child.on('close', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) resolve('sent');
      else fail(`${command} ${code !== null ? `exited ${code}` : `was killed by ${signal}`}: ${stderr.trim() || 'no message'}`);
    });
  });
}
