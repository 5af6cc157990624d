import t from 'tap';
import { OptionError } from '../../lib/protocol/errors.js';
import { type Export, type ExportRegistry, overlayExportRegistry, singleExportRegistry } from '../../lib/server/exports.js';
import { handleOption, type SettledOutcome } from '../../lib/server/negotiation.js';
import { FakeDevice } from '../helpers/fake-device.js';
import { hex } from '../helpers/hex.js';
import {
  ACK,
  context,
  ERR_INVALID,
  ERR_POLICY,
  ERR_SHUTDOWN,
  ERR_UNKNOWN,
  ERR_UNSUP,
  handle,
  infoTypes,
  makeExport,
  metaContexts,
  OPT,
  REP_INFO,
  REP_SERVER,
  replies,
  SIZE,
  settledNow,
  types,
} from '../helpers/negotiation.js';
import { infoRequestData, metaContextData } from '../helpers/raw-nbd/wire.js';

t.test('every reply echoes the option it answers', async (t) => {
  for (const option of [OPT.LIST, OPT.INFO, OPT.STRUCTURED_REPLY, 99, OPT.STARTTLS]) {
    const data = option === OPT.INFO ? infoRequestData('') : Buffer.alloc(0);
    for (const r of replies(await handle(option, data, context()))) t.equal(r.option, option, `option ${option}`);
  }
});

t.test('unknown options get ERR_UNSUP and negotiation continues', async (t) => {
  for (const option of [0, OPT.PEEK_EXPORT, OPT.EXTENDED_HEADERS, 12, 99, 0xffffffff]) {
    const outcome = await handle(option, hex`0102`, context());
    t.equal(outcome.kind, 'continue', `option ${option}`);
    const [reply] = replies(outcome);
    t.equal(reply?.replyType, ERR_UNSUP, `option ${option}: ERR_UNSUP`);
    t.equal(outcome.replies.length, 1);
  }
  const [reply] = replies(await handle(OPT.EXTENDED_HEADERS, Buffer.alloc(0), context()));
  t.match(reply?.payload.toString(), /NBD_OPT_EXTENDED_HEADERS is not supported/, 'a readable message');
});

t.test('STARTTLS is refused by policy (NOTLS mode)', async (t) => {
  const outcome = await handle(OPT.STARTTLS, Buffer.alloc(0), context());
  t.equal(outcome.kind, 'continue');
  t.strictSame(types(outcome), [ERR_POLICY]);
});

t.test('ABORT is acknowledged, then the connection closes', async (t) => {
  for (const data of [Buffer.alloc(0), hex`ff`]) {
    const outcome = await handle(OPT.ABORT, data, context());
    t.equal(outcome.kind, 'close');
    t.strictSame(outcome.replies, [hex`0003e889045565a9 00000002 00000001 00000000`], 'exact ACK bytes');
  }
});

t.test('LIST sends one NBD_REP_SERVER per export then ACK', async (t) => {
  const outcome = await handle(OPT.LIST, Buffer.alloc(0), context());
  t.equal(outcome.kind, 'continue');
  t.strictSame(outcome.replies, [
    hex`0003e889045565a9 00000003 00000002 00000015 # LIST, REP_SERVER, length 21
        00000006 676f6c64656e                      # "golden"
        676f6c64656e206469736b                     # "golden disk"`,
    hex`0003e889045565a9 00000003 00000001 00000000`,
  ]);
  const bad = await handle(OPT.LIST, hex`00`, context());
  t.equal(bad.kind, 'continue');
  t.strictSame(types(bad), [ERR_INVALID], 'LIST with data is ERR_INVALID');
  t.equal(types(await handle(OPT.LIST, Buffer.alloc(0), context())).filter((x) => x === REP_SERVER).length, 1);
});

t.test('INFO: NBD_INFO_EXPORT always first, then what was asked, then ACK', async (t) => {
  const plain = await handle(OPT.INFO, infoRequestData(''), context());
  t.equal(plain.kind, 'continue', 'INFO does not start transmission');
  t.strictSame(types(plain), [REP_INFO, ACK]);
  t.strictSame(infoTypes(plain), [0]);
  const [exportInfo] = replies(plain);
  t.equal(exportInfo?.payload.length, 12);
  t.equal(Number(exportInfo?.payload.readBigUInt64BE(2)), SIZE, 'size');

  const all = await handle(OPT.INFO, infoRequestData('golden', [3, 2, 1, 0, 0xffff]), context());
  t.strictSame(infoTypes(all), [0, 1, 2, 3], 'EXPORT first; unknown types ignored; each once');
  t.strictSame(types(all).at(-1), ACK);
  const r = replies(all);
  t.equal(r[1]?.payload.subarray(2).toString(), 'golden', 'NBD_INFO_NAME is the canonical name');
  t.equal(r[2]?.payload.subarray(2).toString(), 'golden disk', 'NBD_INFO_DESCRIPTION');
  t.strictSame(r[3]?.payload, hex`0003 00000001 00001000 02000000`, 'BLOCK_SIZE: min 1, preferred 4096, max 32 MiB');
});

t.test('INFO: NBD_INFO_BLOCK_SIZE only when asked; preferred is at least 512', async (t) => {
  t.notOk(infoTypes(await handle(OPT.INFO, infoRequestData('', [1, 2]), context())).includes(3));
  t.notOk(infoTypes(await handle(OPT.GO, infoRequestData(''), context())).includes(3), 'not for GO either');
  const small = context(singleExportRegistry(makeExport('golden', { blockSize: 256 })));
  const [, block] = replies(await handle(OPT.INFO, infoRequestData('', [3]), small));
  t.equal(block?.payload.readUInt32BE(6), 512);
  const big = context(singleExportRegistry(makeExport('golden', { blockSize: 65536 })));
  const [, block2] = replies(await handle(OPT.INFO, infoRequestData('', [3]), big));
  t.equal(block2?.payload.readUInt32BE(6), 65536);
});

t.test('GO starts transmission with the same info INFO gave', async (t) => {
  const ctx = context();
  const info = await handle(OPT.INFO, infoRequestData('golden', [1]), ctx);
  const go = await handle(OPT.GO, infoRequestData('golden', [1]), ctx);
  t.equal(go.kind, 'transmission');
  t.strictSame(
    replies(go).map((r) => [r.replyType, r.payload]),
    replies(info).map((r) => [r.replyType, r.payload]),
  );
  if (go.kind !== 'transmission') return;
  t.equal(go.exp.name, 'golden');
  t.equal(go.flags, replies(go)[0]?.payload.readUInt16BE(10), 'flags match NBD_INFO_EXPORT');
  t.strictSame(go.contexts, [], 'no contexts without SET_META_CONTEXT');
  const byDefault = await handle(OPT.GO, infoRequestData(''), context());
  t.equal(byDefault.kind, 'transmission', 'the empty name reaches the default export');
});

t.test('GO/INFO with an unknown export: ERR_UNKNOWN and no INFO', async (t) => {
  for (const option of [OPT.GO, OPT.INFO]) {
    const outcome = await handle(option, infoRequestData('nope'), context());
    t.equal(outcome.kind, 'continue');
    const r = replies(outcome);
    t.strictSame(
      r.map((x) => x.replyType),
      [ERR_UNKNOWN],
    );
    t.match(r[0]?.payload.toString(), /unknown export "nope"/);
  }
});

t.test('export names in messages are sanitized and truncated', async (t) => {
  const name = `\u0001evil\n${'x'.repeat(100)}`;
  const [r] = replies(await handle(OPT.GO, infoRequestData(name), context()));
  const message = r?.payload.toString() ?? '';
  // biome-ignore lint/suspicious/noControlCharactersInRegex: the point of the check
  t.notMatch(message, /[\x00-\x1f]/, 'no control characters');
  t.match(message, /"\?evil\?x+\.\.\."/);
  t.ok(message.length < 120, 'truncated');
});

t.test('GO/INFO with malformed data: ERR_INVALID', async (t) => {
  for (const data of [hex``, hex`00000005 61`, hex`00000000 0000 00`, hex`00000001 00 0000`]) {
    const outcome = await handle(OPT.GO, data, context());
    t.equal(outcome.kind, 'continue');
    t.strictSame(types(outcome), [ERR_INVALID], data.toString('hex'));
  }
});

t.test('EXPORT_NAME: reply of 134 bytes, or 10 with NO_ZEROES', async (t) => {
  const outcome = await handle(OPT.EXPORT_NAME, Buffer.from('golden'), context());
  t.equal(outcome.kind, 'transmission');
  t.equal(outcome.replies.length, 1);
  t.equal(outcome.replies[0]?.length, 134);
  if (outcome.kind !== 'transmission') return;
  const expected = Buffer.alloc(134);
  expected.writeBigUInt64BE(BigInt(SIZE), 0);
  expected.writeUInt16BE(outcome.flags, 8);
  t.strictSame(outcome.replies[0], expected);

  const short = await handle(OPT.EXPORT_NAME, Buffer.alloc(0), context(undefined, { noZeroes: true }));
  t.equal(short.kind, 'transmission', 'the empty name is the default export');
  t.strictSame(short.replies[0], expected.subarray(0, 10));
});

t.test('EXPORT_NAME that cannot be served closes without a reply', async (t) => {
  for (const [what, data, ctx] of [
    ['unknown name', Buffer.from('nope'), context()],
    ['NUL in the name', Buffer.from('golden\0'), context()],
    ['shutting down', Buffer.from('golden'), context(undefined, {}, true)],
  ] as const) {
    const outcome = await handle(OPT.EXPORT_NAME, data, ctx);
    t.equal(outcome.kind, 'close', what);
    t.strictSame(outcome.replies, [], `${what}: no bytes (proto.md: it cannot carry an error)`);
  }
});

t.test('STRUCTURED_REPLY: ACK once; again or with data is ERR_INVALID', async (t) => {
  const ctx = context();
  t.strictSame(types(await handle(OPT.STRUCTURED_REPLY, hex`00`, ctx)), [ERR_INVALID], 'with data');
  t.equal(ctx.state.structuredReplies, false, 'refusal changes nothing');
  t.strictSame((await handle(OPT.STRUCTURED_REPLY, Buffer.alloc(0), ctx)).replies, [
    hex`0003e889045565a9 00000008 00000001 00000000`,
  ]);
  t.equal(ctx.state.structuredReplies, true);
  t.strictSame(types(await handle(OPT.STRUCTURED_REPLY, Buffer.alloc(0), ctx)), [ERR_INVALID], 'twice');
  t.equal(ctx.state.structuredReplies, true);
});

t.test('DF appears in the flags only once structured replies are on', async (t) => {
  const ctx = context();
  const before = await handle(OPT.GO, infoRequestData(''), ctx);
  await handle(OPT.STRUCTURED_REPLY, Buffer.alloc(0), ctx);
  const after = await handle(OPT.GO, infoRequestData(''), ctx);
  if (before.kind !== 'transmission' || after.kind !== 'transmission') {
    t.fail('GO failed');
    return;
  }
  t.equal(before.flags & 0x80, 0);
  t.equal(after.flags & 0x80, 0x80);
  const exportName = await handle(OPT.EXPORT_NAME, Buffer.alloc(0), ctx);
  if (exportName.kind !== 'transmission') {
    t.fail('EXPORT_NAME failed');
    return;
  }
  t.equal(exportName.flags & 0x80, 0x80, 'EXPORT_NAME too');
  t.equal(exportName.replies[0]?.readUInt16BE(8), exportName.flags);
});

t.test('META_CONTEXT before STRUCTURED_REPLY: ERR_INVALID', async (t) => {
  for (const option of [OPT.LIST_META_CONTEXT, OPT.SET_META_CONTEXT]) {
    const outcome = await handle(option, metaContextData('', ['base:allocation']), context());
    t.equal(outcome.kind, 'continue');
    t.strictSame(types(outcome), [ERR_INVALID], `option ${option}`);
  }
});

t.test('LIST_META_CONTEXT', async (t) => {
  const sr = { structuredReplies: true };
  const list = (queries: string[]): SettledOutcome =>
    settledNow(handleOption(OPT.LIST_META_CONTEXT, metaContextData('', queries), context(undefined, sr)));
  t.strictSame(
    metaContexts(list([])),
    [
      [0, 'base:allocation'],
      [0, 'qemu:allocation-depth'],
    ],
    'zero queries list every context, with id 0',
  );
  t.strictSame(types(list([])).at(-1), ACK);
  t.strictSame(metaContexts(list(['base:'])), [[0, 'base:allocation']], '"base:" lists the base namespace');
  t.strictSame(metaContexts(list(['qemu:'])), [[0, 'qemu:allocation-depth']]);
  t.strictSame(metaContexts(list(['qemu:allocation-depth'])), [[0, 'qemu:allocation-depth']]);
  t.strictSame(types(list(['x-unknown:thing', 'base:nothing'])), [ACK], 'unknown queries are ignored');
  t.strictSame(types(list(['nocolon'])), [ERR_INVALID], 'a query without a namespace is malformed');
  const ctx = context(undefined, sr);
  await handle(OPT.LIST_META_CONTEXT, metaContextData('', []), ctx);
  t.equal(ctx.state.metaContexts, null, 'LIST does not select');
  const unknown = await handle(OPT.LIST_META_CONTEXT, metaContextData('nope', []), ctx);
  t.strictSame(types(unknown), [ERR_UNKNOWN]);
  const malformed = await handle(OPT.LIST_META_CONTEXT, hex`00000000 00000001`, ctx);
  t.strictSame(types(malformed), [ERR_INVALID]);
});

t.test('SET_META_CONTEXT selects with unique non-zero ids', async (t) => {
  const ctx = context(undefined, { structuredReplies: true });
  const both = await handle(OPT.SET_META_CONTEXT, metaContextData('', ['qemu:allocation-depth', 'base:allocation']), ctx);
  const chosen = metaContexts(both);
  t.strictSame(chosen.map(([, name]) => name).sort(), ['base:allocation', 'qemu:allocation-depth']);
  const ids = chosen.map(([id]) => id);
  t.ok(
    ids.every((id) => id !== 0),
    'non-zero ids',
  );
  t.equal(new Set(ids).size, 2, 'unique ids');
  t.strictSame(ctx.state.metaContexts?.contexts.map((c) => c.name).sort(), ['base:allocation', 'qemu:allocation-depth']);

  const go = await handle(OPT.GO, infoRequestData('golden'), ctx);
  if (go.kind !== 'transmission') {
    t.fail('GO failed');
    return;
  }
  t.strictSame(
    go.contexts.map((c) => [c.id, c.name]).sort(),
    chosen.slice().sort(),
    'GO on the same export carries the selection',
  );
});

t.test('SET_META_CONTEXT replaces the selection, even when it fails', async (t) => {
  const ctx = context(undefined, { structuredReplies: true });
  await handle(OPT.SET_META_CONTEXT, metaContextData('', ['base:allocation']), ctx);
  t.equal(ctx.state.metaContexts?.contexts.length, 1);
  await handle(OPT.SET_META_CONTEXT, metaContextData('', ['qemu:allocation-depth']), ctx);
  t.strictSame(
    ctx.state.metaContexts?.contexts.map((c) => c.name),
    ['qemu:allocation-depth'],
    'replaced',
  );

  const failed = await handle(OPT.SET_META_CONTEXT, metaContextData('nope', ['base:allocation']), ctx);
  t.strictSame(types(failed), [ERR_UNKNOWN]);
  t.equal(ctx.state.metaContexts, null, 'a failed SET clears the selection');

  await handle(OPT.SET_META_CONTEXT, metaContextData('', ['base:allocation']), ctx);
  await handle(OPT.SET_META_CONTEXT, hex`00000000`, ctx);
  t.equal(ctx.state.metaContexts, null, 'a malformed SET clears it too');

  await handle(OPT.SET_META_CONTEXT, metaContextData('', ['base:allocation']), ctx);
  const none = await handle(OPT.SET_META_CONTEXT, metaContextData('', []), ctx);
  t.strictSame(types(none), [ACK], 'zero queries select nothing');
  t.strictSame(ctx.state.metaContexts?.contexts, []);

  const bare = await handle(OPT.SET_META_CONTEXT, metaContextData('', ['base:']), ctx);
  t.strictSame(types(bare), [ACK], '"base:" is ignored in SET');
  const go = await handle(OPT.GO, infoRequestData(''), ctx);
  if (go.kind !== 'transmission') {
    t.fail('GO failed');
    return;
  }
  t.strictSame(go.contexts, []);
});

t.test('a selection only holds for the export it named', async (t) => {
  const a = makeExport('a');
  const b = makeExport('b');
  const registry: ExportRegistry = {
    list: () => [a, b],
    lookup: (name) => (name === 'a' || name === '' ? a : name === 'b' ? b : undefined),
  };
  const ctx = context(registry, { structuredReplies: true });
  await handle(OPT.SET_META_CONTEXT, metaContextData('a', ['base:allocation']), ctx);
  const goB = await handle(OPT.GO, infoRequestData('b'), ctx);
  if (goB.kind !== 'transmission') {
    t.fail('GO b failed');
    return;
  }
  t.strictSame(goB.contexts, [], 'GO on another export: no contexts');
  const goDefault = await handle(OPT.GO, infoRequestData(''), ctx);
  if (goDefault.kind !== 'transmission') {
    t.fail('GO default failed');
    return;
  }
  t.equal(goDefault.contexts.length, 1, 'the default name reaching the same export keeps them');
  const byName = await handle(OPT.EXPORT_NAME, Buffer.from('b'), ctx);
  if (byName.kind !== 'transmission') {
    t.fail('EXPORT_NAME b failed');
    return;
  }
  t.strictSame(byName.contexts, []);
  t.equal(types(await handle(OPT.LIST, Buffer.alloc(0), ctx)).filter((x) => x === REP_SERVER).length, 2);
});

t.test('while shutting down every option but ABORT gets ERR_SHUTDOWN', async (t) => {
  const ctx = context(undefined, { structuredReplies: true }, true);
  for (const [option, data] of [
    [OPT.LIST, Buffer.alloc(0)],
    [OPT.INFO, infoRequestData('')],
    [OPT.GO, infoRequestData('')],
    [OPT.STRUCTURED_REPLY, Buffer.alloc(0)],
    [OPT.SET_META_CONTEXT, metaContextData('', ['base:allocation'])],
    [OPT.STARTTLS, Buffer.alloc(0)],
    [99, Buffer.alloc(0)],
  ] as const) {
    const outcome = await handle(option, data, ctx);
    t.equal(outcome.kind, 'continue', `option ${option}`);
    t.strictSame(types(outcome), [ERR_SHUTDOWN], `option ${option}: ERR_SHUTDOWN`);
  }
  t.equal((await handle(OPT.ABORT, Buffer.alloc(0), ctx)).kind, 'close');
});

t.test('errors other than OptionError are not swallowed', async (t) => {
  const registry: ExportRegistry = {
    list: () => {
      throw new Error('registry broke');
    },
    lookup: () => undefined,
  };
  t.throws(() => handleOption(OPT.LIST, Buffer.alloc(0), context(registry)), { message: 'registry broke' });
});

t.test('named overlays: GO opens the device at GO, refusals become replies, contexts follow the name', async (t) => {
  let opened = 0;
  let refuse = false;
  const device = new FakeDevice(SIZE);
  const registry = overlayExportRegistry({
    plain: makeExport('golden'),
    policy: 'both',
    attachNamed: async () => {
      if (refuse) throw Object.assign(new Error('named overlay golden@x is in use by process 1'), { code: 'EBUSY' });
      opened++;
      return device;
    },
  });
  const ctx = context(registry, { structuredReplies: true });
  const info = await handle(OPT.INFO, infoRequestData('golden@x'), ctx);
  t.strictSame(types(info), [REP_INFO, ACK]);
  t.equal(
    replies(info)[0]?.payload.readUInt16BE(10) ?? 0,
    0x0001 | 0x0004 | 0x0008 | 0x0020 | 0x0040 | 0x0100 | 0x0400 | 0x0800 | 0x0080,
    'INFO: CAN_MULTI_CONN among the flags',
  );
  t.equal(opened, 0, 'INFO opens nothing');

  await handle(OPT.SET_META_CONTEXT, metaContextData('golden@x', ['base:allocation']), ctx);
  const go = await handle(OPT.GO, infoRequestData('golden@x'), ctx);
  if (go.kind !== 'transmission') {
    t.fail('GO failed');
    return;
  }
  t.equal(opened, 1, 'GO opened the device');
  t.equal(go.device, device, 'connection.ts gets that device');
  t.equal(go.contexts.length, 1, 'SET_META_CONTEXT on golden@x holds for GO golden@x');
  t.equal(go.exp.name, 'golden@x');

  refuse = true;
  const busy = await handle(OPT.GO, infoRequestData('golden@x'), ctx);
  t.equal(busy.kind, 'continue', 'a refused GO lets negotiation go on');
  t.strictSame(types(busy), [ERR_UNKNOWN]);
  t.match(replies(busy)[0]?.payload.toString(), /in use by process 1/);
  const byName = await handle(OPT.EXPORT_NAME, Buffer.from('golden@x'), ctx);
  t.equal(byName.kind, 'close', 'EXPORT_NAME cannot carry an error: close');
  if (byName.kind === 'close') t.match(byName.reason, /in use by process 1/);
  const bad = await handle(OPT.EXPORT_NAME, Buffer.from('golden@../x'), ctx);
  t.equal(bad.kind, 'close');
  const invalid = await handle(OPT.GO, infoRequestData('golden@../x'), ctx);
  t.strictSame(types(invalid), [ERR_INVALID]);
  t.match(replies(invalid)[0]?.payload.toString(), /invalid overlay name "..\/x"/);
});

t.test('only GO and EXPORT_NAME wait for a device open; every other option is answered at once', async (t) => {
  const ctx = context(undefined, { structuredReplies: true });
  for (const [option, data] of [
    [OPT.LIST, Buffer.alloc(0)],
    [OPT.INFO, infoRequestData('')],
    [OPT.LIST_META_CONTEXT, metaContextData('', [])],
    [OPT.SET_META_CONTEXT, metaContextData('', ['base:allocation'])],
    [OPT.GO, infoRequestData('nope')],
    [OPT.EXPORT_NAME, Buffer.from('nope')],
    [99, Buffer.alloc(0)],
  ] as const) {
    t.not(handleOption(option, data, ctx).kind, 'opening', `option ${option}`);
  }
  t.equal(handleOption(OPT.GO, infoRequestData(''), ctx).kind, 'opening', 'GO');
  t.equal(handleOption(OPT.EXPORT_NAME, Buffer.alloc(0), ctx).kind, 'opening', 'EXPORT_NAME');
});

/** An export whose openDevice() waits until the test settles it. */
function slowExport(): { exp: Export; opens: number; resolve: (d: FakeDevice) => void; reject: (err: unknown) => void } {
  const slow = {
    opens: 0,
    resolve: (_d: FakeDevice): void => undefined,
    reject: (_err: unknown): void => undefined,
    exp: {
      ...makeExport(),
      openDevice: () => {
        slow.opens++;
        return new Promise<FakeDevice>((resolve, reject) => {
          slow.resolve = resolve;
          slow.reject = reject;
        });
      },
    },
  };
  return slow;
}

t.test('GO: the INFO replies and ACK come only with the opened device', async (t) => {
  const slow = slowExport();
  const outcome = handleOption(OPT.GO, infoRequestData('golden', [1]), context(singleExportRegistry(slow.exp)));
  if (outcome.kind !== 'opening') {
    t.fail('GO did not open a device');
    return;
  }
  t.equal(slow.opens, 1, 'the open started at GO');
  let settled: SettledOutcome | null = null;
  void outcome.settled.then((o) => (settled = o));
  await new Promise((resolve) => setImmediate(resolve));
  t.equal(settled, null, 'no outcome while the device opens');
  const device = new FakeDevice(SIZE);
  slow.resolve(device);
  const go = await outcome.settled;
  t.strictSame(types(go), [REP_INFO, REP_INFO, ACK]);
  if (go.kind !== 'transmission') {
    t.fail('GO failed');
    return;
  }
  t.equal(go.device, device, 'the transmission outcome carries the device');
});

t.test('a refused open: GO gets the NBD_REP_ERR_* with its message, EXPORT_NAME closes', async (t) => {
  for (const option of [OPT.GO, OPT.EXPORT_NAME]) {
    const slow = slowExport();
    const data = option === OPT.GO ? infoRequestData('golden') : Buffer.from('golden');
    const outcome = handleOption(option, data, context(singleExportRegistry(slow.exp)));
    if (outcome.kind !== 'opening') {
      t.fail('no open');
      return;
    }
    slow.reject(new OptionError(ERR_UNKNOWN, 'named overlay golden@x is in use by process 1'));
    const refused = await outcome.settled;
    if (option === OPT.GO) {
      t.equal(refused.kind, 'continue', 'GO: negotiation goes on');
      t.strictSame(
        replies(refused).map((r) => [r.option, r.replyType, r.payload.toString()]),
        [[OPT.GO, ERR_UNKNOWN, 'named overlay golden@x is in use by process 1']],
        'GO: only the error, no INFO and no ACK',
      );
    } else {
      t.equal(refused.kind, 'close', 'EXPORT_NAME: close');
      t.strictSame(replies(refused), [], 'without a byte');
      if (refused.kind === 'close') t.match(refused.reason, /"golden": named overlay golden@x is in use by process 1/);
    }
  }
});

t.test('an unexpected open failure rejects the outcome (the connection closes)', async (t) => {
  const slow = slowExport();
  const outcome = handleOption(OPT.GO, infoRequestData('golden'), context(singleExportRegistry(slow.exp)));
  if (outcome.kind !== 'opening') {
    t.fail('no open');
    return;
  }
  slow.reject(new Error('EIO on the overlay'));
  await t.rejects(outcome.settled, { message: 'EIO on the overlay' });
});
