// Probe for doc/workers.md: what handing an accepted TCP socket to a child process costs a new
// connection. The parent accepts with pauseOnConnect and, with HANDOFF=1, sends the socket to a
// child over the IPC channel (child_process.fork + send(message, socket)); the owner of the socket
// writes one byte, and the client times connect() to that byte. N connections one after another.
//   node bench/workers/handoff.mjs [N]     prints median and p99 µs, direct and handed off

import { fork } from 'node:child_process';
import net from 'node:net';
import { fileURLToPath } from 'node:url';

if (process.argv[2] === 'child') {
  process.on('message', (msg, socket) => {
    if (msg === 'conn' && socket) {
      socket.resume();
      socket.end('x');
    }
  });
  process.send('ready');
} else {
  const n = Number(process.argv[2] ?? 2000);
  const child = fork(fileURLToPath(import.meta.url), ['child'], { stdio: 'inherit' });
  await new Promise((resolve) => child.once('message', resolve));
  let handOff = false;
  const server = net.createServer({ pauseOnConnect: true }, (socket) => {
    if (handOff) child.send('conn', socket, { keepOpen: false });
    else {
      socket.resume();
      socket.end('x');
    }
  });
  await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = server.address().port;
  const once = () =>
    new Promise((resolve, reject) => {
      const t0 = process.hrtime.bigint();
      const c = net.connect(port, '127.0.0.1');
      c.once('data', () => {
        resolve(Number(process.hrtime.bigint() - t0) / 1000);
        c.destroy();
      });
      c.once('error', reject);
    });
  const stats = (xs) => {
    xs.sort((a, b) => a - b);
    return `median ${xs[Math.floor(xs.length / 2)].toFixed(0)} µs, p99 ${xs[Math.floor(xs.length * 0.99)].toFixed(0)} µs`;
  };
  for (const mode of [false, true, false, true]) {
    handOff = mode;
    const xs = [];
    for (let i = 0; i < n; i++) xs.push(await once());
    console.log(`${mode ? 'handed off' : 'direct    '}: ${stats(xs)} (${n} connections)`);
  }
  server.close();
  child.kill();
}
