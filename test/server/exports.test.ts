import t from 'tap';
import { OptionError } from '../../lib/protocol/errors.js';
import { type Export, overlayExportRegistry, singleExportRegistry, transmissionFlags } from '../../lib/server/exports.js';
import { FakeDevice } from '../helpers/fake-device.js';

const HAS_FLAGS = 0x0001;
const READ_ONLY = 0x0002;
const SEND_FLUSH = 0x0004;
const SEND_FUA = 0x0008;
const SEND_TRIM = 0x0020;
const SEND_WRITE_ZEROES = 0x0040;
const SEND_DF = 0x0080;
const CAN_MULTI_CONN = 0x0100;
const SEND_RESIZE = 0x0200;
const SEND_CACHE = 0x0400;
const SEND_FAST_ZERO = 0x0800;

function makeExport(readOnly: boolean, name = 'golden'): Export {
  return {
    name,
    description: '',
    size: 4096,
    readOnly,
    preferredBlockSize: 4096,
    openDevice: async () => new FakeDevice(4096, { writable: !readOnly }),
  };
}

t.test('transmission flags, writable and read-only, with and without structured replies', async (t) => {
  const writableBase = HAS_FLAGS | SEND_FLUSH | SEND_FUA | SEND_CACHE | SEND_TRIM | SEND_WRITE_ZEROES | SEND_FAST_ZERO;
  const readOnlyBase = HAS_FLAGS | SEND_FLUSH | SEND_FUA | SEND_CACHE | READ_ONLY | CAN_MULTI_CONN;
  t.equal(transmissionFlags(makeExport(false), false), writableBase, 'writable');
  t.equal(transmissionFlags(makeExport(false), true), writableBase | SEND_DF, 'writable + SR');
  t.equal(transmissionFlags(makeExport(true), false), readOnlyBase, 'read-only');
  t.equal(transmissionFlags(makeExport(true), true), readOnlyBase | SEND_DF, 'read-only + SR');
});

t.test('flag invariants from proto.md', async (t) => {
  for (const readOnly of [false, true]) {
    for (const sr of [false, true]) {
      const flags = transmissionFlags(makeExport(readOnly), sr);
      const what = `${readOnly ? 'read-only' : 'writable'}${sr ? ' + SR' : ''}`;
      t.equal(flags & HAS_FLAGS, HAS_FLAGS, `${what}: HAS_FLAGS always`);
      if (!readOnly) t.equal(flags & CAN_MULTI_CONN, 0, `${what}: never CAN_MULTI_CONN on a private overlay`);
      t.equal((flags & SEND_DF) !== 0, sr, `${what}: DF only with structured replies`);
      if ((flags & SEND_FAST_ZERO) !== 0) t.ok(flags & SEND_WRITE_ZEROES, `${what}: FAST_ZERO needs WRITE_ZEROES`);
      if ((flags & SEND_FUA) !== 0) t.ok(flags & SEND_FLUSH, `${what}: FUA comes with FLUSH (Linux)`);
      t.equal(flags & SEND_RESIZE, 0, `${what}: no RESIZE`);
      t.equal(flags & ~0x0fff, 0, `${what}: no bits beyond the ones defined`);
      t.ok(flags <= 0xffff, `${what}: fits 16 bits`);
      if (readOnly) t.equal(flags & (SEND_TRIM | SEND_WRITE_ZEROES | SEND_FAST_ZERO), 0, `${what}: no write-type commands`);
    }
  }
});

t.test('singleExportRegistry reaches the export by its name and by ""', async (t) => {
  const exp = makeExport(false);
  const registry = singleExportRegistry(exp);
  t.strictSame(registry.list(), [exp]);
  t.equal(registry.lookup(''), exp);
  t.equal(registry.lookup('golden'), exp);
  t.equal(registry.lookup('Golden'), undefined, 'case-sensitive');
  t.equal(registry.lookup('golden '), undefined);
  t.equal(registry.lookup('other'), undefined);
});

t.test('overlayExportRegistry: EXPORT, EXPORT@NAME, policies and refusals', async (t) => {
  const plain = makeExport(false);
  const attached: string[] = [];
  const attachNamed = async (name: string): Promise<FakeDevice> => {
    attached.push(name);
    return new FakeDevice(4096);
  };
  const both = overlayExportRegistry({ plain, policy: 'both', attachNamed });
  t.strictSame(both.list(), [plain], 'LIST shows only the plain export');
  t.equal(both.lookup(''), plain);
  t.equal(both.lookup('golden'), plain);
  t.equal(both.lookup('other@x'), undefined, 'another export prefix is unknown');
  t.equal(both.lookup('goldenx'), undefined);
  const named = both.lookup('golden@alice');
  t.equal(named?.name, 'golden@alice');
  t.equal(named?.multiConn, true);
  t.equal(
    transmissionFlags(named as Export, false) & CAN_MULTI_CONN,
    CAN_MULTI_CONN,
    'a named overlay advertises CAN_MULTI_CONN',
  );
  t.equal(transmissionFlags(plain, true) & CAN_MULTI_CONN, 0, 'plain never does');
  t.same(attached, [], 'lookup (INFO) opens nothing');
  await named?.openDevice();
  t.same(attached, ['alice'], 'openDevice attaches');

  const refusal = (
    registry: ReturnType<typeof overlayExportRegistry>,
    name: string,
    replyType: number,
    message: RegExp,
  ): void => {
    t.throws(() => registry.lookup(name), new OptionError(replyType, ''), name);
    try {
      registry.lookup(name);
    } catch (err) {
      t.match((err as Error).message, message, `${name}: ${(err as Error).message}`);
    }
  };
  const ERR_POLICY = 0x80000002;
  const ERR_INVALID = 0x80000003;
  const ERR_UNKNOWN = 0x80000006;
  for (const bad of ['golden@', 'golden@../x', 'golden@.x', 'golden@a b', `golden@${'x'.repeat(65)}`]) {
    refusal(both, bad, ERR_INVALID, /invalid overlay name/);
  }
  refusal(
    overlayExportRegistry({ plain, policy: 'throwaway', attachNamed }),
    'golden@a',
    ERR_POLICY,
    /named overlays are disabled/,
  );
  const namedOnly = overlayExportRegistry({ plain, policy: 'named', attachNamed });
  for (const name of ['golden', '']) {
    // Found (NBD_OPT_INFO answers), but refused at open (GO / EXPORT_NAME).
    const open = async (): Promise<void> => {
      await namedOnly.lookup(name)?.openDevice();
    };
    await t.rejects(open(), new OptionError(ERR_POLICY, ''), name);
    await t.rejects(open(), {
      message: /export "golden" only serves named overlays: connect to golden@NAME/,
    });
  }
  t.equal(namedOnly.lookup('golden@a')?.name, 'golden@a');
  refusal(overlayExportRegistry({ plain: makeExport(true), policy: 'both' }), 'golden@a', ERR_POLICY, /read-only/);
  refusal(
    overlayExportRegistry({ plain: makeExport(false, 'my disk'), policy: 'both', attachNamed }),
    'my disk@a',
    ERR_UNKNOWN,
    /cannot have named overlays/,
  );

  const failing = overlayExportRegistry({
    plain,
    policy: 'both',
    attachNamed: async () => {
      throw Object.assign(new Error('named overlay golden@b is in use by process 1'), { code: 'EBUSY' });
    },
  });
  const b = failing.lookup('golden@b') as Export;
  await t.rejects(
    b.openDevice(),
    new OptionError(ERR_UNKNOWN, 'named overlay golden@b is in use by process 1'),
    'open failures become ERR_UNKNOWN with the message',
  );
});
