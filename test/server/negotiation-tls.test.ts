// Option haggling under each TLS mode (proto.md "TLS support"), and named overlays owned by a
// TLS identity: the replies, and that nothing is opened for a refused name.

import t from 'tap';
import type { BlockDevice } from '../../lib/block/device.js';
import { type ExportRegistry, type NamedOverlayOwner, overlayExportRegistry } from '../../lib/server/exports.js';
import { FakeDevice } from '../helpers/fake-device.js';
import {
  ACK,
  context,
  ERR_INVALID,
  ERR_POLICY,
  ERR_TLS_REQD,
  handle,
  makeExport,
  OPT,
  REP_INFO,
  REP_SERVER,
  replies,
  SIZE,
  types,
} from '../helpers/negotiation.js';
import { infoRequestData, metaContextData } from '../helpers/raw-nbd/wire.js';

const NONE = Buffer.alloc(0);

t.test('off (NOTLS): STARTTLS is refused by policy, and TLS is never required', async (t) => {
  const outcome = await handle(OPT.STARTTLS, NONE, context(undefined, {}, false, 'off'));
  t.equal(outcome.kind, 'continue');
  t.strictSame(types(outcome), [ERR_POLICY]);
  t.strictSame(types(await handle(OPT.LIST, NONE, context(undefined, {}, false, 'off'))), [REP_SERVER, ACK]);
});

t.test('on (SELECTIVETLS): STARTTLS is acknowledged, every option works without it too', async (t) => {
  const outcome = await handle(OPT.STARTTLS, NONE, context(undefined, {}, false, 'on'));
  t.equal(outcome.kind, 'starttls');
  t.strictSame(outcome.replies, [Buffer.from('0003e889045565a9000000050000000100000000', 'hex')], 'exact ACK bytes');
  t.strictSame(types(await handle(OPT.LIST, NONE, context(undefined, {}, false, 'on'))), [REP_SERVER, ACK]);
  const go = await handle(OPT.GO, infoRequestData('golden'), context(undefined, {}, false, 'on'));
  t.equal(go.kind, 'transmission', 'GO without TLS');
});

t.test('STARTTLS with data, or once TLS runs, is invalid', async (t) => {
  for (const mode of ['on', 'require'] as const) {
    t.strictSame(types(await handle(OPT.STARTTLS, Buffer.from([1]), context(undefined, {}, false, mode))), [ERR_INVALID]);
    const again = await handle(OPT.STARTTLS, NONE, context(undefined, { tls: true }, false, mode));
    t.strictSame(types(again), [ERR_INVALID], `${mode}: a second STARTTLS`);
    t.match(replies(again)[0]?.payload.toString(), /already running/);
  }
});

t.test('require (FORCEDTLS): only STARTTLS and ABORT before TLS; LIST and INFO name nothing', async (t) => {
  const before = (): ReturnType<typeof context> => context(undefined, {}, false, 'require');
  for (const [option, data] of [
    [OPT.LIST, NONE],
    [OPT.INFO, infoRequestData('golden')],
    [OPT.GO, infoRequestData('golden')],
    [OPT.STRUCTURED_REPLY, NONE],
    [OPT.LIST_META_CONTEXT, metaContextData('golden', [])],
    [OPT.SET_META_CONTEXT, metaContextData('golden', ['base:allocation'])],
    [OPT.EXTENDED_HEADERS, NONE],
    [99, NONE],
  ] as const) {
    const outcome = await handle(option, data, before());
    t.equal(outcome.kind, 'continue', `option ${option}`);
    const [reply] = replies(outcome);
    t.equal(reply?.replyType, ERR_TLS_REQD, `option ${option}: ERR_TLS_REQD`);
    t.equal(outcome.replies.length, 1, `option ${option}: nothing else`);
    t.notMatch(reply?.payload.toString(), /golden/, `option ${option}: no export name in the message`);
  }
  const ctx = before();
  t.strictSame(types(await handle(OPT.STRUCTURED_REPLY, NONE, ctx)), [ERR_TLS_REQD]);
  t.equal(ctx.state.structuredReplies, false, 'a refused option changes nothing');
  const exportName = await handle(OPT.EXPORT_NAME, Buffer.from('golden'), before());
  t.equal(exportName.kind, 'close', 'EXPORT_NAME cannot be refused with a reply: the session ends');
  t.strictSame(exportName.replies, []);
  const abort = await handle(OPT.ABORT, NONE, before());
  t.equal(abort.kind, 'close');
  t.strictSame(types(abort), [ACK]);
  t.equal((await handle(OPT.STARTTLS, NONE, before())).kind, 'starttls');
});

t.test('require, once TLS runs: everything works and TLS_REQD is never sent', async (t) => {
  const after = (): ReturnType<typeof context> => context(undefined, { tls: true }, false, 'require');
  t.strictSame(types(await handle(OPT.LIST, NONE, after())), [REP_SERVER, ACK]);
  t.strictSame(types(await handle(OPT.INFO, infoRequestData('golden'), after())), [REP_INFO, ACK]);
  t.equal((await handle(OPT.GO, infoRequestData('golden'), after())).kind, 'transmission');
  t.equal((await handle(OPT.EXPORT_NAME, Buffer.from('golden'), after())).kind, 'transmission');
});

function ownedRegistry(owner: NamedOverlayOwner): { registry: ExportRegistry; attached: string[] } {
  const attached: string[] = [];
  const registry = overlayExportRegistry({
    plain: makeExport('golden'),
    policy: 'both',
    namedOwner: owner,
    attachNamed: async (name): Promise<BlockDevice> => {
      attached.push(name);
      return new FakeDevice(SIZE);
    },
  });
  return { registry, attached };
}

t.test('named overlays owned by the TLS identity: alice opens golden@alice, not golden@bob', async (t) => {
  const { registry, attached } = ownedRegistry('tls-identity');
  const as = (identity: string | undefined): ReturnType<typeof context> =>
    context(registry, { tls: identity !== undefined, tlsIdentity: identity }, false, 'require');
  t.equal((await handle(OPT.GO, infoRequestData('golden@alice'), as('alice'))).kind, 'transmission');
  t.strictSame(attached, ['alice']);

  const bob = await handle(OPT.GO, infoRequestData('golden@bob'), as('alice'));
  t.strictSame(types(bob), [ERR_POLICY], 'alice cannot open golden@bob');
  t.match(replies(bob)[0]?.payload.toString(), /belongs to the TLS identity "bob"; this connection has the TLS identity "alice"/);
  const info = await handle(OPT.INFO, infoRequestData('golden@bob'), as('alice'));
  t.strictSame(types(info), [ERR_POLICY], 'nor see its info');
  const anonymous = await handle(OPT.GO, infoRequestData('golden@alice'), context(registry, {}, false, 'on'));
  t.match(replies(anonymous)[0]?.payload.toString(), /this connection has no TLS identity/, 'no TLS, no named overlay');
  const byExportName = await handle(OPT.EXPORT_NAME, Buffer.from('golden@bob'), as('alice'));
  t.equal(byExportName.kind, 'close', 'EXPORT_NAME of another identity ends the session');
  t.strictSame(attached, ['alice'], 'nothing was opened (or created) for a refused name');

  t.equal((await handle(OPT.GO, infoRequestData('golden'), as('alice'))).kind, 'transmission', 'the plain export is open to all');
  const caseMatters = await handle(OPT.GO, infoRequestData('golden@Alice'), as('alice'));
  t.strictSame(types(caseMatters), [ERR_POLICY], 'names compare exactly');
});

t.test('named overlays owned by anyone: any identity, or none, opens any name', async (t) => {
  const { registry, attached } = ownedRegistry('anyone');
  t.equal((await handle(OPT.GO, infoRequestData('golden@bob'), context(registry, {}, false, 'off'))).kind, 'transmission');
  const alice = context(registry, { tls: true, tlsIdentity: 'alice' }, false, 'on');
  t.equal((await handle(OPT.GO, infoRequestData('golden@bob'), alice)).kind, 'transmission');
  t.strictSame(attached, ['bob', 'bob']);
});
