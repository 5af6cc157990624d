import t from 'tap';
import { ConfigError } from '../../lib/config/config-error.js';
import { type ConfigValue, joinKey, listChoices, quote } from '../../lib/config/config-value.js';
import { parseYamlDocument } from '../../lib/config/yaml-document.js';
import { CONFIG_FILE, yaml } from '../helpers/config-text.js';

/** The root of `text` as a ConfigValue. */
function rootOf(text: string): ConfigValue {
  return parseYamlDocument(text, CONFIG_FILE);
}

/** The value of top-level `key` in `text`. */
function valueAt(text: string, key = 'x'): ConfigValue {
  const value = rootOf(text).mapping().get(key);
  if (value === undefined) throw new Error(`no ${key} in ${text}`);
  return value;
}

/** The message `read` throws. */
function failure(read: () => unknown): string {
  try {
    read();
  } catch (err) {
    if (err instanceof ConfigError) return err.message;
    throw err;
  }
  throw new Error('no error');
}

t.test('an error under a key points at the key, with the path that leads to it', async (t) => {
  const text = yaml`
    exports:
      debian:
        base: x.img
        block-size:   3000
  `;
  const blockSize = rootOf(text).mapping().get('exports')?.mapping().get('debian')?.mapping().get('block-size');
  t.equal(blockSize?.path, 'exports.debian.block-size');
  t.equal(blockSize?.line, 4);
  const err = (() => {
    try {
      blockSize?.fail('3000 is not a power of two');
    } catch (e) {
      return e as ConfigError;
    }
    return undefined;
  })();
  t.strictSame(
    { file: err?.file, line: err?.line, column: err?.column, keyPath: err?.keyPath },
    { file: CONFIG_FILE, line: 4, column: 5, keyPath: 'exports.debian.block-size' },
  );
});

t.test('list items have an index in their path and point at themselves', async (t) => {
  const items = valueAt('x:\n  - a\n  -   b\n').list();
  t.strictSame(
    items.map((item) => [item.path, item.line, item.string()]),
    [
      ['x[0]', 2, 'a'],
      ['x[1]', 3, 'b'],
    ],
  );
  t.equal(
    failure(() => items[1]?.number()),
    `${CONFIG_FILE}:3:7: x[1]: expected a number, not the text "b"`,
  );
  t.equal(
    failure(() => valueAt('x: 1\n').list('a list of things')),
    `${CONFIG_FILE}:1:1: x: expected a list of things, not the number 1`,
  );
});

t.test('what a value is, in words', async (t) => {
  const cases: [string, string][] = [
    ['x: {a: 1}', 'a mapping'],
    ['x: [1]', 'a list'],
    ['x:', 'an empty value'],
    ['x: null', 'an empty value'],
    ['x: text', 'the text "text"'],
    ['x: "10"', 'the text "10"'],
    ['x: true', 'true'],
    ['x: 10', 'the number 10'],
    ['x: 0o17', 'the number 0o17'],
    ['x: 1.50', 'the number 1.50'],
    ['x: .inf', 'the number .inf'],
  ];
  for (const [text, description] of cases) t.equal(valueAt(text).describe(), description, text);
});

t.test('typed readers refuse other types, naming what they expected and what they found', async (t) => {
  t.equal(valueAt('x: hi').string(), 'hi');
  t.equal(
    failure(() => valueAt('x: 12').string()),
    `${CONFIG_FILE}:1:1: x: expected text, not the number 12`,
  );
  t.equal(
    failure(() => valueAt('x: ""').nonEmptyString('a path')),
    `${CONFIG_FILE}:1:1: x: expected a path, not an empty string`,
  );
  t.equal(valueAt('x: false').boolean(), false);
  t.equal(
    failure(() => valueAt('x: yes').boolean()),
    `${CONFIG_FILE}:1:1: x: expected true or false, not the text "yes"`,
  );
  t.equal(valueAt('x: 2.5').number(), 2.5);
  t.equal(
    failure(() => valueAt('x: "10"').number()),
    `${CONFIG_FILE}:1:1: x: expected a number, not the text "10"`,
  );
  t.equal(
    failure(() => valueAt('x: .nan').number('seconds')),
    `${CONFIG_FILE}:1:1: x: expected seconds, not the number .nan`,
  );
  t.equal(valueAt('x: json').oneOf(['text', 'json']), 'json');
  t.equal(
    failure(() => valueAt('x: xml').oneOf(['text', 'json'])),
    `${CONFIG_FILE}:1:1: x: expected "text" or "json", not the text "xml"`,
  );
  t.equal(
    failure(() => valueAt('x: [a]').mapping()),
    `${CONFIG_FILE}:1:1: x: expected a mapping, not a list`,
  );
});

t.test('the scalar, and a plain scalar as written', async (t) => {
  t.equal(valueAt('x: 0660').scalar, 660, 'YAML 1.2 reads a leading zero as decimal');
  t.equal(valueAt('x: 0660').plainSource, '0660');
  t.equal(valueAt('x: "0660"').plainSource, undefined, 'quoted');
  t.equal(valueAt('x: [1]').scalar, undefined);
  t.equal(valueAt('x: [1]').plainSource, undefined);
  t.equal(valueAt('x:').scalar, null);
});

t.test('a key given twice is refused, naming both lines', async (t) => {
  const text = yaml`
    exports:
      debian:
        base: a.img
      ubuntu:
        base: b.img
      debian:
        base: c.img
  `;
  t.equal(
    failure(() => valueAt(text, 'exports').mapping()),
    `${CONFIG_FILE}:6:3: exports.debian: defined twice, on line 2 and on line 6`,
  );
});

t.test('an unknown key is refused with a hint, or the list of keys', async (t) => {
  t.equal(
    failure(() => valueAt('x:\n  blocksize: 1\n').mapping(['base', 'block-size'])),
    `${CONFIG_FILE}:2:3: x.blocksize: unknown key "blocksize" (did you mean "block-size"?)`,
  );
  t.equal(
    failure(() => valueAt('x:\n  colour: 1\n').mapping(['base', 'block-size'])),
    `${CONFIG_FILE}:2:3: x.colour: unknown key "colour"; the keys here are base, block-size`,
  );
});

t.test('keys are words: a list, a mapping or an empty key is refused', async (t) => {
  t.equal(
    failure(() => rootOf('? [a, b]\n: 1\n').mapping()),
    `${CONFIG_FILE}:1:3: expected a key such as name:, not a list as a key`,
  );
  t.equal(
    failure(() => rootOf(': 1\n').mapping()),
    `${CONFIG_FILE}:1:1: expected a key such as name:, not an empty value as a key`,
  );
  t.equal(
    failure(() => valueAt('x:\n  ? \n').mapping()),
    `${CONFIG_FILE}:2:5: x: expected a key such as name:, not an empty value as a key`,
  );
});

t.test('a key YAML reads as a number or a boolean keeps its text', async (t) => {
  const keys = [...rootOf('24.04: a\n22.10: b\ntrue: c\n007: d\n').mapping().entries()].map(([key, value]) => [key, value.path]);
  t.strictSame(keys, [
    ['24.04', '24.04'],
    ['22.10', '22.10'],
    ['true', 'true'],
    ['007', '007'],
  ]);
});

t.test('required and optional keys', async (t) => {
  const fields = valueAt('x:\n  a: 1\n').mapping(['a', 'b']);
  t.equal(fields.size, 1);
  t.equal(fields.require('a', 'an a').number(), 1);
  t.equal(
    failure(() => fields.require('b', 'a b')),
    `${CONFIG_FILE}:1:1: x.b: missing (a b)`,
  );
  t.strictSame(
    fields.optional('a', 'alpha', (v) => v.number()),
    { alpha: 1 },
  );
  t.strictSame(
    fields.optional('b', 'beta', (v) => v.number()),
    {},
  );
  t.equal(
    fields.read('a', (v) => v.number(), 7),
    1,
  );
  t.equal(
    fields.read('b', (v) => v.number(), 7),
    7,
  );
});

t.test('an alias reads as the node its anchor names; errors point at the alias', async (t) => {
  const text = yaml`
    nets: &lab [10.0.0.0/8, 10.1.0.0/16]
    x: *lab
    port: &p "10809"
    y: *p
  `;
  t.strictSame(
    valueAt(text)
      .list()
      .map((item) => item.string()),
    ['10.0.0.0/8', '10.1.0.0/16'],
  );
  t.equal(
    failure(() => valueAt(text, 'y').number()),
    `${CONFIG_FILE}:4:1: y: expected a number, not the text "10809"`,
  );
});

t.test('paths: plain words are joined with dots, anything else is quoted in brackets', async (t) => {
  t.equal(joinKey('', 'exports'), 'exports');
  t.equal(joinKey('exports', 'ubuntu-24.04'), 'exports.ubuntu-24.04');
  t.equal(joinKey('exports', 'my disk'), 'exports["my disk"]');
  t.equal(joinKey('exports', '.hidden'), 'exports[".hidden"]');
  t.equal(joinKey('exports', ''), 'exports[""]');
  t.equal(joinKey('', 'a b'), '["a b"]');
});

t.test('choices and quoted values in messages', async (t) => {
  t.equal(listChoices([]), 'nothing');
  t.equal(listChoices(['on']), '"on"');
  t.equal(listChoices(['off', 'on', 'require']), '"off", "on" or "require"');
  t.equal(quote('a"b'), '"a\\"b"');
  t.equal(quote('x'.repeat(100)), `"${'x'.repeat(60)}…"`);
});
