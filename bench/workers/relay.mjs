// Probe for doc/workers.md: what one more process on a request's path costs. A client sends
// 28-byte requests, QD1, to a process that answers each with 16 + 4096 bytes (an NBD READ's
// simple reply), either directly or through a relay process that copies bytes both ways between
// two unix sockets (as a worker would forward a named overlay's requests to the worker that owns
// it). Prints the mean and p99 round trip, µs.
//   node bench/workers/relay.mjs [N]

import { fork } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

const REQ = 28;
const REPLY = Buffer.alloc(16 + 4096, 1);
const [, , role, a, b] = process.argv;

if (role === 'owner') {
  net
    .createServer((s) => {
      let pending = 0;
      s.on('data', (d) => {
        pending += d.length;
        while (pending >= REQ) {
          pending -= REQ;
          s.write(REPLY);
        }
      });
    })
    .listen(a, () => process.send('ready'));
} else if (role === 'relay') {
  net
    .createServer((s) => {
      const up = net.connect(b);
      s.pipe(up);
      up.pipe(s);
    })
    .listen(a, () => process.send('ready'));
} else {
  const n = Number(role ?? 20000);
  const dir = mkdtempSync(join(tmpdir(), 'relay-'));
  const ownerPath = join(dir, 'owner.sock');
  const relayPath = join(dir, 'relay.sock');
  const self = fileURLToPath(import.meta.url);
  const start = (args) =>
    new Promise((resolve) => {
      const c = fork(self, args);
      c.once('message', () => resolve(c));
    });
  const owner = await start(['owner', ownerPath]);
  const relay = await start(['relay', relayPath, ownerPath]);
  const measure = (path) =>
    new Promise((resolve) => {
      const c = net.connect(path);
      const xs = [];
      let got = 0;
      let t0 = 0n;
      const send = () => {
        t0 = process.hrtime.bigint();
        c.write(Buffer.alloc(REQ));
      };
      c.on('data', (d) => {
        got += d.length;
        if (got < REPLY.length) return;
        got -= REPLY.length;
        xs.push(Number(process.hrtime.bigint() - t0) / 1000);
        if (xs.length < n) send();
        else {
          c.destroy();
          xs.sort((x, y) => x - y);
          const mean = xs.reduce((s, x) => s + x, 0) / xs.length;
          resolve(`mean ${mean.toFixed(1)} µs, p99 ${xs[Math.floor(xs.length * 0.99)].toFixed(0)} µs`);
        }
      });
      c.on('connect', send);
    });
  for (let i = 0; i < 2; i++) {
    console.log(`direct:        ${await measure(ownerPath)} (${n} round trips)`);
    console.log(`through relay: ${await measure(relayPath)} (${n} round trips)`);
  }
  owner.kill();
  relay.kill();
  rmSync(dir, { recursive: true, force: true });
}
