// qemu-img info over NBD reports the base's exact size, even one that is not a multiple of 4 KiB.

import t from 'tap';
import { makePatternBase } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { describeRun, run } from '../helpers/processes.js';
import { startServe } from '../helpers/server-process.js';

const SIZE = 16 * 1024 * 1024 + 1536;

if (requireClients(t, ['qemu-img'])) {
  t.test('qemu-img info shows the base size', async (t) => {
    const dir = t.testdir();
    const base = await makePatternBase(dir, SIZE);
    const server = await startServe(t, base, ['--overlay-dir', `${dir}/overlays`]);
    t.match(server.uri, /^nbd:\/\/127\.0\.0\.1:\d+\/base$/);

    const r = await run('qemu-img', ['info', '--output=json', server.uri]);
    t.equal(r.code, 0, describeRun(r));
    const info = JSON.parse(r.stdout) as { 'virtual-size': number; format: string };
    t.equal(info['virtual-size'], SIZE, 'virtual size is the base size');
    t.equal(info.format, 'raw');

    const human = await run('qemu-img', ['info', server.uri]);
    t.equal(human.code, 0, describeRun(human));
    t.match(human.stdout, `virtual size: 16 MiB (${SIZE} bytes)`);
  });
}
