// Readiness: READY=1, MAINPID= and STATUS= reach the socket NOTIFY_SOCKET names, sent by
// systemd-notify, received here by a python3 stand-in for systemd (test/helpers/notify_receiver.py)
// that sees the sender's pid as systemd does (SCM_CREDENTIALS). Without NOTIFY_SOCKET nothing is
// sent; a receiver that never answers the barrier, or no receiver, fails in one line.

import { join } from 'node:path';
import t from 'tap';
import { notifyReady } from '../../lib/server/readiness.js';
import { requireAll } from '../helpers/ci.js';
import { missing } from '../helpers/clients.js';
import { type NotifyMessage, startNotifyReceiver } from '../helpers/notify-receiver.js';
import { shortDir } from '../helpers/server-fixture.js';
import { waitFor, within } from '../helpers/wait.js';

if (requireAll(t, missing('systemd-notify', 'python3'), 'the Debian systemd package has systemd-notify')) {
  t.test('without NOTIFY_SOCKET nothing is sent', async (t) => {
    t.equal(await notifyReady({ env: {} }), 'not-requested');
    t.equal(await notifyReady({ env: { NOTIFY_SOCKET: '' }, command: '/nonexistent' }), 'not-requested');
  });

  t.test('READY=1, MAINPID and STATUS reach NOTIFY_SOCKET before notifyReady resolves', async (t) => {
    const { path, messages } = await startNotifyReceiver(t);
    t.equal(
      await within(notifyReady({ env: { NOTIFY_SOCKET: path }, status: 'serving nbd://[::]:10809/golden' }), 30_000, 'notify'),
      'sent',
    );
    // Received before systemd-notify exited (the barrier); its line may still be in our pipe.
    const readyMessage = (): NotifyMessage | undefined => messages.find((m) => m.data.split('\n').includes('READY=1'));
    await waitFor(() => readyMessage() !== undefined && messages.at(-1)?.data === 'BARRIER=1', 'the messages', 10_000);
    const ready = readyMessage();
    t.strictSame(ready?.data.split('\n').sort(), [`MAINPID=${process.pid}`, 'READY=1', 'STATUS=serving nbd://[::]:10809/golden']);
    // The barrier: a second message with a pipe fd, which systemd-notify waited on.
    t.match(messages.at(-1), { data: 'BARRIER=1', fds: 1 });
    if (process.geteuid?.() === 0) {
      t.equal(ready?.pid, process.pid, 'as root the message comes from our own pid: NotifyAccess=main accepts it');
    } else {
      t.not(ready?.pid, process.pid, "unprivileged it comes from systemd-notify's pid: the unit needs NotifyAccess=all");
    }
  });

  t.test('a service manager that never takes the barrier: one line, after the barrier timeout', async (t) => {
    const { path, messages } = await startNotifyReceiver(t, true);
    await t.rejects(within(notifyReady({ env: { NOTIFY_SOCKET: path } }), 30_000, 'notify'), {
      message: /^cannot tell systemd the server is ready: systemd-notify exited 1: .*barrier/i,
    });
    await waitFor(() => messages.some((m) => m.data.includes('READY=1')), 'READY=1 at the receiver', 10_000);
    t.pass('READY=1 itself was sent: only the barrier went unanswered');
  });

  t.test('no socket at NOTIFY_SOCKET, or no systemd-notify: one line', async (t) => {
    const path = join(shortDir(t), 'nobody.sock');
    await t.rejects(notifyReady({ env: { NOTIFY_SOCKET: path } }), {
      message: /^cannot tell systemd the server is ready: systemd-notify exited 1: .+/,
    });
    await t.rejects(notifyReady({ env: { NOTIFY_SOCKET: path }, command: 'no-such-systemd-notify' }), {
      message: 'cannot tell systemd the server is ready: no-such-systemd-notify not found (it comes with systemd)',
    });
  });
}
