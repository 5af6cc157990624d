import t from 'tap';
import { isWellFormedQuery, listContexts, selectContexts } from '../../lib/server/meta-contexts.js';

const names = (list: readonly { name: string }[]): string[] => list.map((c) => c.name);

t.test('listContexts: no query lists all, namespaces list theirs, names match exactly', async (t) => {
  t.strictSame(names(listContexts([])), ['base:allocation', 'qemu:allocation-depth']);
  t.strictSame(names(listContexts(['base:'])), ['base:allocation']);
  t.strictSame(names(listContexts(['qemu:'])), ['qemu:allocation-depth']);
  t.strictSame(names(listContexts(['base:', 'qemu:'])), ['base:allocation', 'qemu:allocation-depth']);
  t.strictSame(names(listContexts(['base:allocation', 'base:allocation'])), ['base:allocation'], 'no duplicates');
  t.strictSame(names(listContexts(['base:allocatio'])), [], 'no prefix matching');
  t.strictSame(names(listContexts(['qemu:dirty-bitmap:'])), []);
  t.strictSame(names(listContexts(['x-foo:'])), []);
  t.strictSame(names(listContexts(['BASE:allocation'])), [], 'case-sensitive');
});

t.test('selectContexts: exact names only; "base:" alone selects nothing', async (t) => {
  t.strictSame(names(selectContexts([])), []);
  t.strictSame(names(selectContexts(['base:'])), []);
  t.strictSame(names(selectContexts(['qemu:'])), []);
  t.strictSame(names(selectContexts(['base:allocation'])), ['base:allocation']);
  t.strictSame(names(selectContexts(['qemu:allocation-depth', 'base:allocation'])), ['base:allocation', 'qemu:allocation-depth']);
  t.strictSame(names(selectContexts(['base:nothing'])), [], 'unknown leaf in base: is ignored');
});

t.test('context ids are unique and non-zero', async (t) => {
  const ids = listContexts([]).map((c) => c.id);
  t.ok(ids.every((id) => Number.isInteger(id) && id > 0 && id <= 0xffffffff));
  t.equal(new Set(ids).size, ids.length);
});

t.test('status values per extent state', async (t) => {
  const [base, depth] = listContexts([]);
  if (base === undefined || depth === undefined) {
    t.fail('contexts missing');
    return;
  }
  t.equal(base.status('data'), 0, 'base:allocation data -> 0');
  t.equal(base.status('base'), 0, 'base:allocation base -> 0');
  t.equal(base.status('zero'), 3, 'base:allocation zero -> HOLE|ZERO');
  t.equal(depth.status('data'), 1, 'allocation-depth overlay data -> 1');
  t.equal(depth.status('zero'), 1, 'allocation-depth overlay zero -> 1');
  t.equal(depth.status('base'), 2, 'allocation-depth base -> 2');
});

t.test('isWellFormedQuery needs a namespace', async (t) => {
  t.ok(isWellFormedQuery('base:'));
  t.ok(isWellFormedQuery('base:allocation'));
  t.ok(isWellFormedQuery('x-anything:whatever:more'));
  t.notOk(isWellFormedQuery(''));
  t.notOk(isWellFormedQuery('allocation'));
});
