// A stand-in for systemd's notification socket: test/helpers/notify_receiver.py bound at a fresh
// NOTIFY_SOCKET path, the messages it received so far (with the sender's pid). Killed at teardown.

import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { Test } from 'tap';
import { ROOT } from './processes.js';
import { shortDir } from './server-fixture.js';
import { waitFor } from './wait.js';

export interface NotifyMessage {
  /** The datagram: `READY=1\nMAINPID=…` lines. */
  readonly data: string;
  /** The sender's pid from SCM_CREDENTIALS, as systemd attributes messages. */
  readonly pid: number | null;
  /** File descriptors it carried (systemd-notify's BARRIER=1 sends a pipe). */
  readonly fds: number;
}

export interface NotifyReceiver {
  /** What to set NOTIFY_SOCKET to. */
  readonly path: string;
  readonly messages: NotifyMessage[];
}

/** `keepFds`: never close a barrier's pipe, as a service manager that does not answer. */
export async function startNotifyReceiver(t: Test, keepFds = false): Promise<NotifyReceiver> {
  const path = join(shortDir(t), 'notify.sock');
  const script = join(ROOT, 'test', 'helpers', 'notify_receiver.py');
  const child = spawn('python3', [script, path, ...(keepFds ? ['--keep-fds'] : [])], { stdio: ['ignore', 'pipe', 'inherit'] });
  t.teardown(() => {
    child.kill();
  });
  const messages: NotifyMessage[] = [];
  let bound = false;
  createInterface({ input: child.stdout }).on('line', (line) => {
    if (line === 'bound') bound = true;
    else messages.push(JSON.parse(line) as NotifyMessage);
  });
  await waitFor(() => bound, 'the notify receiver to bind', 30_000);
  return { path, messages };
}
