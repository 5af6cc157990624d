// Named overlays through the CLI and python3-libnbd: `golden@x` survives disconnects and server
// restarts, is shared by concurrent connections (a FLUSH on one covers writes on all, and they
// see each other's writes), is isolated from `golden` and from `golden@y`, advertises
// CAN_MULTI_CONN (plain `golden` never does), is refused with a clear message when its name is
// bad, when the policy forbids it, when another server holds it, or when it was made for
// another base (the file stays byte-identical).

import { copyFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { guardBase, makePatternBase, makeRandomBase, sha256File } from '../helpers/bases.js';
import { requireClients } from '../helpers/clients.js';
import { listDir, waitForDir } from '../helpers/files.js';
import { pySession } from '../helpers/py-session.js';
import { startServe } from '../helpers/server-process.js';

const SIZE = 8 * 1024 * 1024;
const b64 = (b: Buffer): string => b.toString('base64');

if (requireClients(t, [], true)) {
  t.test('kept across reconnects and restarts, shared, isolated', async (t) => {
    const dir = t.testdir();
    const overlays = join(dir, 'overlays');
    const base = await makePatternBase(dir, SIZE, 'golden.img');
    const guard = await guardBase(t, base);
    let server = await startServe(t, base, ['--overlay-dir', overlays]);
    const py = pySession(t);
    const read = py.pread;
    const baseBytes = readFileSync(base);

    await py.ok({ op: 'connect', h: 'x1', uri: `${server.uri}@x` });
    const info = await py.ok({ op: 'info', h: 'x1' });
    t.equal(info.can_multi_conn, true, 'golden@x advertises CAN_MULTI_CONN');
    await py.ok({ op: 'connect', h: 'p', uri: server.uri });
    t.equal((await py.ok({ op: 'info', h: 'p' })).can_multi_conn, false, 'plain golden does not');

    const a = Buffer.alloc(10000, 0xa1);
    await py.ok({ op: 'pwrite', h: 'x1', offset: 5000, data: b64(a) });
    await py.ok({ op: 'close', h: 'x1' });
    const kept = await waitForDir(overlays, (n) => n.length === 1);
    t.same(kept, ['named-golden@x.cow'], 'the named overlay is kept after its connection closes (lock released)');

    // Reconnect (sequential connections): the write is there, though it was never flushed.
    await py.ok({ op: 'connect', h: 'x2', uri: `${server.uri}@x` });
    t.same(await read('x2', 5000, 10000), a, "a second connection reads the first one's write");

    // Concurrent connections: writes by one are seen by the other; a FLUSH on one covers both.
    await py.ok({ op: 'connect', h: 'x3', uri: `${server.uri}@x` });
    const c = Buffer.alloc(4096, 0xc3);
    await py.ok({ op: 'pwrite', h: 'x3', offset: 1 << 20, data: b64(c) });
    await py.ok({ op: 'trim', h: 'x2', offset: 2 << 20, length: 65536 });
    await py.ok({ op: 'flush', h: 'x2' });
    t.same(await read('x2', 1 << 20, 4096), c, "x2 sees x3's write");
    t.same(await read('x3', 2 << 20, 65536), Buffer.alloc(65536), "x3 sees x2's trim");

    // Isolation: golden and golden@y see none of it.
    t.same(await read('p', 5000, 10000), baseBytes.subarray(5000, 15000), 'plain golden reads the base');
    await py.ok({ op: 'connect', h: 'y', uri: `${server.uri}@y` });
    t.same(await read('y', 5000, 10000), baseBytes.subarray(5000, 15000), 'golden@y reads the base');
    await py.ok({ op: 'pwrite', h: 'y', offset: 5000, data: b64(Buffer.alloc(100, 0x77)) });
    t.same(await read('x2', 5000, 10000), a, "golden@x does not see golden@y's write");

    // A second server on the same overlay directory cannot take golden@x while it is in use.
    const other = await startServe(t, base, ['--overlay-dir', overlays]);
    const refused = await py.call({ op: 'connect', h: 'o', uri: `${other.uri}@x` });
    t.notOk(refused.ok, 'another server refuses golden@x while the first holds it');
    t.match(
      other.stderr() + String(refused.error),
      /in use by process|server has no export|rejected/,
      `refusal: ${refused.error}`,
    );
    t.equal((await other.stop()).code, 0);

    // Restart: everything written survives a clean stop (flushed at close).
    await py.ok({ op: 'pwrite', h: 'x3', offset: SIZE - 100, data: b64(Buffer.alloc(100, 0xee)) });
    await py.ok({ op: 'close', h: 'x2' });
    await py.ok({ op: 'close', h: 'x3' });
    await py.ok({ op: 'close', h: 'y' });
    await py.ok({ op: 'close', h: 'p' });
    t.equal((await server.stop()).code, 0);
    t.same(listDir(overlays), ['named-golden@x.cow', 'named-golden@y.cow'], 'kept at stop, no lock files left');

    server = await startServe(t, base, ['--overlay-dir', overlays]);
    t.same(listDir(overlays), ['named-golden@x.cow', 'named-golden@y.cow'], 'not swept at start');
    await py.ok({ op: 'connect', h: 'x4', uri: `${server.uri}@x` });
    t.same(await read('x4', 5000, 10000), a, 'first write after restart');
    t.same(await read('x4', 1 << 20, 4096), c, 'second write after restart');
    t.same(await read('x4', 2 << 20, 65536), Buffer.alloc(65536), 'trim after restart');
    t.same(await read('x4', SIZE - 100, 100), Buffer.alloc(100, 0xee), 'unflushed write before a clean stop');
    await py.ok({ op: 'close', h: 'x4' });
    t.equal(await py.end(), 0);
    t.equal((await server.stop()).code, 0);
    await guard.check();
  });

  t.test('refusals: bad names, policy, another base', async (t) => {
    const dir = t.testdir();
    const overlays = join(dir, 'overlays');
    const base = await makePatternBase(dir, SIZE, 'golden.img');
    const py = pySession(t);
    const named = await startServe(t, base, ['--overlay-dir', overlays, '--overlays', 'named']);
    for (const bad of ['..%2Fx', '.hidden', 'a%20b', 'x'.repeat(65), '']) {
      const r = await py.call({ op: 'connect', h: 'bad', uri: `${named.uri}@${bad}` });
      t.notOk(r.ok, `golden@${decodeURIComponent(bad)} refused: ${r.error}`);
    }
    const plain = await py.call({ op: 'connect', h: 'plain', uri: named.uri });
    t.notOk(plain.ok, `--overlays named refuses plain golden: ${plain.error}`);
    await py.ok({ op: 'connect', h: 'n', uri: `${named.uri}@n` });
    await py.ok({ op: 'pwrite', h: 'n', offset: 0, data: b64(Buffer.alloc(512, 1)) });
    await py.ok({ op: 'close', h: 'n' });
    t.equal((await named.stop()).code, 0);
    t.same(listDir(overlays), ['named-golden@n.cow'], 'only the good name made a file');

    const throwaway = await startServe(t, base, ['--overlay-dir', overlays, '--overlays', 'throwaway']);
    const r = await py.call({ op: 'connect', h: 't', uri: `${throwaway.uri}@n` });
    t.notOk(r.ok, `--overlays throwaway refuses golden@n: ${r.error}`);
    await py.ok({ op: 'connect', h: 'tp', uri: throwaway.uri });
    await py.ok({ op: 'close', h: 'tp' });
    t.equal((await throwaway.stop()).code, 0);

    // Another base of the same size: the overlay is refused and not changed.
    const file = join(overlays, 'named-golden@n.cow');
    const before = await sha256File(file);
    const otherBase = await makeRandomBase(dir, SIZE, 'other.img');
    copyFileSync(otherBase, join(dir, 'golden2.img'));
    const wrong = await startServe(t, join(dir, 'golden2.img'), ['--overlay-dir', overlays, '-x', 'golden']);
    const m = await py.call({ op: 'connect', h: 'w', uri: `${wrong.uri}@n` });
    t.notOk(m.ok, `an overlay of another base is refused: ${m.error}`);
    t.match(
      wrong.stderr(),
      /belongs to another base image: made for \(size \d+, fingerprint [0-9a-f]+…\), the base is \(size \d+, fingerprint [0-9a-f]+…\)/,
      'one line names both',
    );
    t.equal(await sha256File(file), before, 'the overlay file is unchanged');
    t.equal((await wrong.stop()).code, 0);
    t.equal(await py.end(), 0);
  });
}
