// One qemu-io session (one connection, one overlay): aligned and unaligned pattern writes,
// write -z, discard, and reads verifying every byte class; then a second connection sees the
// pristine base. The base is striped (each MiB one byte value) so qemu-io's read -P can check
// untouched base bytes, including those around unaligned writes (read-modify-write).

import { join } from 'node:path';
import t from 'tap';
import { guardBase, makeStripedBase, stripeByte } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { describeRun, run } from '../helpers/processes.js';
import { startServe } from '../helpers/server-process.js';

const MiB = 1024 * 1024;
const SIZE = 16 * MiB + 1536;

const hex = (n: number): string => `0x${n.toString(16)}`;

if (requireClients(t, ['qemu-io'])) {
  t.test('writes, zeroes, discards and reads in one session; then pristine', async (t) => {
    const dir = t.testdir();
    const base = await makeStripedBase(dir, SIZE);
    const guard = await guardBase(t, base);
    const server = await startServe(t, base, ['--overlay-dir', join(dir, 'overlays')]);
    const b = (offset: number): string => hex(stripeByte(offset));
    const last = SIZE - 1536; // start of the partial last block

    const commands = [
      // aligned
      'write -P 0xa1 0 64k',
      'write -P 0xa2 2M 1M',
      // unaligned: inside one block, across blocks, across a stripe boundary
      'write -P 0xb1 70000 3000',
      'write -P 0xb2 131071 10000',
      `write -P 0xb3 ${4 * MiB - 777} 2000`,
      `write -P 0xb4 ${11 * MiB + 4097} 1`,
      // zeroes: aligned, unaligned
      'write -z 5M 1M',
      'write -z 7000000 12345',
      // discard (this server reads discarded ranges back as zeros)
      'discard 8M 1M',
      'discard 9437185 5000',
      // the partial last block, and the last byte
      `write -P 0xc1 ${last + 100} 1000`,
      `write -P 0xc2 ${SIZE - 1} 1`,
      // overwrite inside earlier writes
      'write -P 0xd1 1000 24',
      'flush',
      // reads: written bytes
      'read -P 0xa1 0 1000',
      'read -P 0xd1 1000 24',
      'read -P 0xa1 1024 64488',
      'read -P 0xa2 2M 1M',
      'read -P 0xb1 70000 3000',
      'read -P 0xb2 131071 10000',
      `read -P 0xb3 ${4 * MiB - 777} 2000`,
      `read -P 0xb4 ${11 * MiB + 4097} 1`,
      // base bytes next to unaligned writes (read-modify-write kept them)
      `read -P ${b(65536)} 65536 4464`,
      `read -P ${b(73000)} 73000 58071`,
      `read -P ${b(141071)} 141071 1000`,
      `read -P ${b(4 * MiB - 1000)} ${4 * MiB - 1000} 223`,
      `read -P ${b(4 * MiB + 1223)} ${4 * MiB + 1223} 4000`,
      `read -P ${b(11 * MiB)} ${11 * MiB + 4096} 1`,
      `read -P ${b(11 * MiB)} ${11 * MiB + 4098} 4094`,
      // zeroes and discards
      'read -P 0 5M 1M',
      `read -P ${b(7000000 - 1)} ${7000000 - 100} 100`,
      'read -P 0 7000000 12345',
      `read -P ${b(7012345)} 7012345 100`,
      'read -P 0 8M 1M',
      `read -P ${b(9437184)} 9437184 1`,
      'read -P 0 9437185 5000',
      `read -P ${b(9442185)} 9442185 1000`,
      // end of the image
      `read -P ${b(last)} ${last} 100`,
      `read -P 0xc1 ${last + 100} 1000`,
      `read -P ${b(last + 1100)} ${last + 1100} ${SIZE - 1 - last - 1100}`,
      `read -P 0xc2 ${SIZE - 1} 1`,
      // untouched stripes
      `read -P ${b(12 * MiB)} 12M 1M`,
    ];
    const r = await run('qemu-io', ['-f', 'raw', server.uri, ...commands.flatMap((c) => ['-c', c])]);
    t.equal(r.code, 0, describeRun(r));
    t.notMatch(r.stdout + r.stderr, /Pattern verification failed|error|failed/i, 'every read verified');
    t.equal(r.stdout.match(/^read \d+\/\d+ bytes/gm)?.length, commands.filter((c) => c.startsWith('read')).length);

    // Reads past the end fail cleanly.
    const past = await run('qemu-io', ['-f', 'raw', server.uri, '-c', `read ${SIZE - 1} 2`]);
    t.match(
      past.stdout + past.stderr,
      /Input\/output error|Invalid argument|out of range|beyond/i,
      'read past the end is refused',
    );

    // Second connection: the base, untouched.
    const again = [0, 70000, 2 * MiB, 4 * MiB - 777, 5 * MiB, 8 * MiB, 11 * MiB + 4096, last].map(
      (off) => `read -P ${b(off)} ${off} 512`,
    );
    const fresh = await run('qemu-io', ['-r', '-f', 'raw', server.uri, ...again.flatMap((c) => ['-c', c])]);
    t.equal(fresh.code, 0, describeRun(fresh));
    t.notMatch(fresh.stdout, /Pattern verification failed/, 'a new connection reads the pristine base');

    t.equal((await server.stop()).code, 0);
    await guard.check();
  });
}
