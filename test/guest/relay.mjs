// One guest TCP connection -> one TCP connection to 127.0.0.1:PORT (nbd-cow).
//
// QEMU user networking runs this for every connection the guest opens to a `guestfwd=…-cmd:`
// address (libslirp's fork_exec: g_spawn_async with one end of a socketpair as stdin, stdout
// AND stderr, in a new session). So nothing may ever be written to stdout or stderr here: it
// would go to the guest as NBD bytes. What happened goes to LOG (one JSON line per
// connection: pid, when, bytes each way), which the tests read to count connections.
//
//   node relay.mjs PORT LOG [dump]
//
// With `dump`, the raw bytes each way also go to LOG.PID.up (guest -> server) and
// LOG.PID.down (server -> guest), and LOG.PID.tl gets "MS up|down TOTAL" per chunk, for finding
// a lost request or reply.
//
// Plain JavaScript (QEMU starts it with a bare `node`, no TypeScript loader). It ends when
// either side closes, and after 10 minutes whatever happens.

import { appendFileSync } from 'node:fs';
import net from 'node:net';

const port = Number(process.argv[2]);
const logFile = process.argv[3];
const dump = process.argv[4] === 'dump' && logFile !== undefined;
const started = Date.now();
let toHost = 0;
let toGuest = 0;
let done = false;

function note(event, extra = {}) {
  if (logFile === undefined) return;
  try {
    appendFileSync(
      logFile,
      `${JSON.stringify({ pid: process.pid, event, ms: Date.now() - started, toHost, toGuest, ...extra })}\n`,
    );
  } catch {
    // nowhere to say it
  }
}

// Keep any stray error output away from the guest's socket.
process.stderr.write = () => true;
process.stdout.write = () => true;

const guest = new net.Socket({ fd: 0, readable: true, writable: true });
const host = net.connect({ port, host: '127.0.0.1' });

function finish(why) {
  if (done) return;
  done = true;
  note('closed', { why });
  guest.destroy();
  host.destroy();
  process.exit(0);
}

note('started');
host.on('connect', () => note('connected'));
guest.on('data', (b) => {
  toHost += b.length;
  if (dump) {
    appendFileSync(`${logFile}.${process.pid}.up`, b);
    appendFileSync(`${logFile}.${process.pid}.tl`, `${Date.now() - started} up ${toHost}\n`);
  }
});
host.on('data', (b) => {
  toGuest += b.length;
  if (dump) {
    appendFileSync(`${logFile}.${process.pid}.down`, b);
    appendFileSync(`${logFile}.${process.pid}.tl`, `${Date.now() - started} down ${toGuest}\n`);
  }
});
guest.pipe(host);
host.pipe(guest);
guest.on('error', (e) => finish(`guest error ${e.code ?? e.message}`));
host.on('error', (e) => finish(`host error ${e.code ?? e.message}`));
guest.on('close', () => finish('guest closed'));
host.on('close', () => finish('host closed'));
process.on('uncaughtException', (e) => finish(`exception ${e.message}`));
setTimeout(() => finish('10 minute limit'), 600_000).unref();
