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
  t.equal(base.status({ length: 1, state: 'data' }), 0, 'base:allocation data -> 0');
  t.equal(base.status({ length: 1, state: 'base' }), 0, 'base:allocation base -> 0');
  t.equal(base.status({ length: 1, state: 'zero' }), 3, 'base:allocation zero -> HOLE|ZERO');
  t.equal(base.status({ length: 1, state: 'zero', depth: 3 }), 3, 'base:allocation zero in a layer -> HOLE|ZERO');
  t.equal(depth.status({ length: 1, state: 'data' }), 1, 'allocation-depth overlay data -> 1');
  t.equal(depth.status({ length: 1, state: 'zero' }), 1, 'allocation-depth overlay zero -> 1');
  t.equal(depth.status({ length: 1, state: 'base' }), 2, 'allocation-depth base without a depth -> 2');
  t.equal(depth.status({ length: 1, state: 'data', depth: 3 }), 3, 'allocation-depth: the depth the extent gives');
  t.equal(depth.status({ length: 1, state: 'base', depth: 4 }), 4, 'allocation-depth: base under two layers -> 4');
});

t.test('isWellFormedQuery needs a namespace', async (t) => {
  t.ok(isWellFormedQuery('base:'));
  t.ok(isWellFormedQuery('base:allocation'));
  t.ok(isWellFormedQuery('x-anything:whatever:more'));
  t.notOk(isWellFormedQuery(''));
  t.notOk(isWellFormedQuery('allocation'));
});
