// ExportTable: several configured exports behind one ExportRegistry. Listing order, plain names,
// `EXPORT@NAME` routed to its export's registry, "" reaching the first export, the TLS and
// allow-list checks an export adds before its registry is asked, and replace() swapping the
// whole table at once.

import t, { type Test } from 'tap';
import { NBD_REP_ERR_POLICY, NBD_REP_ERR_TLS_REQD } from '../../lib/protocol/constants.js';
import { OptionError } from '../../lib/protocol/errors.js';
import { AccessList } from '../../lib/server/access-list.js';
import { ExportTable, type ExportTableEntry } from '../../lib/server/export-table.js';
import { type ClientIdentity, type Export, overlayExportRegistry } from '../../lib/server/exports.js';
import { FakeDevice } from '../helpers/fake-device.js';

function fakeExport(name: string, size = 4096): Export {
  return {
    name,
    description: `the ${name} export`,
    size,
    readOnly: false,
    preferredBlockSize: 4096,
    openDevice: async () => new FakeDevice(size),
  };
}

interface Made {
  readonly entry: ExportTableEntry;
  /** Named overlays attached through this entry's registry, in order. */
  readonly attached: string[];
}

function entry(name: string, extra: { allow?: readonly string[]; requireTls?: boolean; size?: number } = {}): Made {
  const attached: string[] = [];
  const plain = fakeExport(name, extra.size);
  const registry = overlayExportRegistry({
    plain,
    policy: 'both',
    attachNamed: async (overlayName) => {
      attached.push(overlayName);
      return new FakeDevice(plain.size);
    },
  });
  return {
    entry: {
      plain,
      registry,
      allow: extra.allow === undefined ? undefined : new AccessList(extra.allow),
      requireTls: extra.requireTls ?? false,
    },
    attached,
  };
}

const TCP_PLAIN = (peerAddress: string): ClientIdentity => ({ tlsIdentity: undefined, tls: false, peerAddress });
const TCP_TLS = (peerAddress: string): ClientIdentity => ({ tlsIdentity: 'alice', tls: true, peerAddress });
const UNIX_PLAIN: ClientIdentity = { tlsIdentity: undefined, tls: false, peerAddress: undefined };
const UNIX_TLS: ClientIdentity = { tlsIdentity: undefined, tls: true, peerAddress: undefined };

/** The OptionError `lookup` throws, or a failure when it throws none or another kind. */
function refusalOf(t: Test, lookup: () => unknown): OptionError | undefined {
  try {
    const found = lookup();
    t.fail(`expected an OptionError, got ${JSON.stringify(found)}`);
  } catch (err) {
    if (err instanceof OptionError) return err;
    t.fail(`expected an OptionError, got ${String(err)}`);
  }
  return undefined;
}

t.test('list() gives the plain exports in the order of the entries', async (t) => {
  const alpha = entry('alpha');
  const beta = entry('beta');
  const gamma = entry('gamma');
  const table = new ExportTable([beta.entry, alpha.entry, gamma.entry]);
  t.strictSame(
    table.list().map((e) => e.name),
    ['beta', 'alpha', 'gamma'],
  );
  t.equal(table.list()[0], beta.entry.plain, 'the plain Export objects themselves');
});

t.test('plain names reach their own export; unknown names are undefined', async (t) => {
  const alpha = entry('alpha');
  const beta = entry('beta');
  const table = new ExportTable([alpha.entry, beta.entry]);
  t.equal(table.lookup('alpha'), alpha.entry.plain);
  t.equal(table.lookup('beta'), beta.entry.plain);
  t.equal(table.lookup('gamma'), undefined, 'a name no entry has');
  t.equal(table.lookup('Alpha'), undefined, 'names are case-sensitive');
  t.equal(table.lookup('alpha '), undefined);
  t.equal(table.lookup('gamma@x'), undefined, 'a named overlay of an export that does not exist');
  t.equal(table.lookup('@x'), undefined, 'a named overlay of no export');
});

t.test('"" reaches the first entry, whatever its name', async (t) => {
  const beta = entry('beta');
  const alpha = entry('alpha');
  const table = new ExportTable([beta.entry, alpha.entry]);
  t.equal(table.lookup(''), beta.entry.plain);
  t.equal(new ExportTable([]).lookup(''), undefined, 'an empty table has no default export');
  t.strictSame(new ExportTable([]).list(), []);
});

t.test("EXPORT@NAME goes to that export's registry and opens a named overlay there", async (t) => {
  const alpha = entry('alpha', { size: 8192 });
  const beta = entry('beta', { size: 16384 });
  const table = new ExportTable([alpha.entry, beta.entry]);
  const named = table.lookup('beta@alice');
  t.equal(named?.name, 'beta@alice');
  t.equal(named?.overlayOf, 'beta', 'the named overlay belongs to beta');
  t.equal(named?.size, 16384, "with beta's size");
  t.strictSame([alpha.attached, beta.attached], [[], []], 'lookup alone attaches nothing');
  await named?.openDevice();
  t.strictSame(alpha.attached, [], 'alpha is not asked');
  t.strictSame(beta.attached, ['alice'], "beta's registry attached the overlay");
  const other = table.lookup('alpha@bob');
  t.equal(other?.overlayOf, 'alpha');
  await other?.openDevice();
  t.strictSame(alpha.attached, ['bob']);
});

t.test("the registry's own refusals come through unchanged", async (t) => {
  const table = new ExportTable([entry('alpha').entry]);
  const err = refusalOf(t, () => table.lookup('alpha@../x'));
  t.equal(err?.replyType, 0x80000003, 'NBD_REP_ERR_INVALID from overlayExportRegistry');
  t.match(err?.message, /invalid overlay name/);
});

t.test('requireTls: a client without TLS is refused with NBD_REP_ERR_TLS_REQD, a TLS client gets in', async (t) => {
  const open = entry('open');
  const secret = entry('secret', { requireTls: true });
  const table = new ExportTable([secret.entry, open.entry]);
  for (const [what, client] of [
    ['no client identity', undefined],
    ['TCP without TLS', TCP_PLAIN('127.0.0.1')],
    ['unix without TLS', UNIX_PLAIN],
  ] as const) {
    for (const name of ['secret', '', 'secret@alice']) {
      const err = refusalOf(t, () => table.lookup(name, client));
      t.equal(err?.replyType, NBD_REP_ERR_TLS_REQD, `${what}, ${JSON.stringify(name)}: NBD_REP_ERR_TLS_REQD`);
      t.match(err?.message, /"secret" requires TLS/);
    }
  }
  t.strictSame(secret.attached, [], 'nothing attached for a refused client');
  t.equal(table.lookup('secret', TCP_TLS('127.0.0.1')), secret.entry.plain, 'TLS over TCP');
  t.equal(table.lookup('secret', UNIX_TLS), secret.entry.plain, 'TLS over a unix socket');
  t.equal(table.lookup('', TCP_TLS('127.0.0.1')), secret.entry.plain, '"" with TLS');
  t.equal(table.lookup('secret@alice', TCP_TLS('127.0.0.1'))?.name, 'secret@alice', 'a named overlay with TLS');
  t.equal(table.lookup('open', TCP_PLAIN('127.0.0.1')), open.entry.plain, 'an export without requireTls needs no TLS');
  t.equal(table.lookup('open@x', UNIX_PLAIN)?.name, 'open@x');
});

t.test('allow list: a TCP peer outside is refused with NBD_REP_ERR_POLICY, one inside gets in', async (t) => {
  const lab = entry('lab', { allow: ['10.0.0.0/8', '::1'] });
  const open = entry('open');
  const table = new ExportTable([lab.entry, open.entry]);
  for (const peer of ['192.168.1.1', '11.0.0.1', '::2', '127.0.0.1']) {
    for (const name of ['lab', '', 'lab@alice']) {
      const err = refusalOf(t, () => table.lookup(name, TCP_PLAIN(peer)));
      t.equal(err?.replyType, NBD_REP_ERR_POLICY, `${peer}, ${JSON.stringify(name)}: NBD_REP_ERR_POLICY`);
      t.match(err?.message, new RegExp(`"lab" is not available to ${peer.replace(/\./g, '\\.')}`));
    }
    t.equal(table.lookup('open', TCP_PLAIN(peer)), open.entry.plain, `${peer}: an export without an allow list admits it`);
  }
  t.strictSame(lab.attached, []);
  for (const peer of ['10.1.2.3', '::ffff:10.1.2.3', '::1']) {
    t.equal(table.lookup('lab', TCP_PLAIN(peer)), lab.entry.plain, `${peer} is inside`);
    t.equal(table.lookup('lab@alice', TCP_PLAIN(peer))?.name, 'lab@alice', `${peer}: its named overlays too`);
  }
  t.equal(table.lookup('lab', TCP_TLS('10.1.2.3')), lab.entry.plain, 'TLS does not matter to the allow list');
});

t.test('allow list: unix-socket clients (peerAddress undefined) are not checked', async (t) => {
  const lab = entry('lab', { allow: ['10.0.0.0/8'] });
  const nobody = entry('nobody', { allow: [] });
  const table = new ExportTable([lab.entry, nobody.entry]);
  t.equal(table.lookup('lab', UNIX_PLAIN), lab.entry.plain);
  t.equal(table.lookup('nobody', UNIX_PLAIN), nobody.entry.plain, 'even an empty allow list');
  t.equal(table.lookup('nobody@x', UNIX_PLAIN)?.name, 'nobody@x');
  t.equal(table.lookup('lab'), lab.entry.plain, 'nor a lookup without a client');
  const err = refusalOf(t, () => table.lookup('nobody', TCP_PLAIN('127.0.0.1')));
  t.equal(err?.replyType, NBD_REP_ERR_POLICY, 'an empty allow list refuses every TCP client');
});

t.test('TLS is checked before the allow list', async (t) => {
  const both = entry('both', { allow: ['10.0.0.0/8'], requireTls: true });
  const table = new ExportTable([both.entry]);
  t.equal(refusalOf(t, () => table.lookup('both', TCP_PLAIN('192.168.1.1')))?.replyType, NBD_REP_ERR_TLS_REQD);
  t.equal(refusalOf(t, () => table.lookup('both', TCP_TLS('192.168.1.1')))?.replyType, NBD_REP_ERR_POLICY);
  t.equal(table.lookup('both', TCP_TLS('10.0.0.1')), both.entry.plain);
});

t.test('replace() swaps every entry, the default and the list at once', async (t) => {
  const alpha = entry('alpha');
  const beta = entry('beta');
  const table = new ExportTable([alpha.entry, beta.entry]);
  const oldList = table.list();
  const gamma = entry('gamma');
  const beta2 = entry('beta', { requireTls: true });
  table.replace([gamma.entry, beta2.entry]);
  t.strictSame(
    table.list().map((e) => e.name),
    ['gamma', 'beta'],
  );
  t.strictSame(
    oldList.map((e) => e.name),
    ['alpha', 'beta'],
    'a list taken before is not changed under its holder',
  );
  t.equal(table.lookup('alpha'), undefined, 'a removed export is gone');
  t.equal(table.lookup('alpha@x'), undefined, 'and its named overlays');
  t.equal(table.lookup(''), gamma.entry.plain, 'the new first entry is the default');
  t.equal(table.lookup('beta', TCP_TLS('127.0.0.1')), beta2.entry.plain, 'a changed export is the new entry');
  t.equal(
    refusalOf(t, () => table.lookup('beta', TCP_PLAIN('127.0.0.1')))?.replyType,
    NBD_REP_ERR_TLS_REQD,
    "with the new entry's policy",
  );
  await table.lookup('beta@x', TCP_TLS('127.0.0.1'))?.openDevice();
  t.strictSame([beta.attached, beta2.attached], [[], ['x']], "named overlays go to the new entry's registry");
});

t.test('duplicate names throw, in the constructor and in replace() (which then keeps the old table)', async (t) => {
  t.throws(() => new ExportTable([entry('alpha').entry, entry('beta').entry, entry('alpha').entry]), {
    message: 'export "alpha" is configured twice',
  });
  const alpha = entry('alpha');
  const table = new ExportTable([alpha.entry]);
  t.throws(() => table.replace([entry('beta').entry, entry('beta').entry]), { message: 'export "beta" is configured twice' });
  t.strictSame(
    table.list().map((e) => e.name),
    ['alpha'],
    'the list is unchanged',
  );
  t.equal(table.lookup(''), alpha.entry.plain, 'the default is unchanged');
  t.equal(table.lookup('beta'), undefined);
});
