import t from 'tap';
import { parseByteSize } from '../lib/size.js';

t.test('sizes with and without a suffix, powers of 1024, either case', async (t) => {
  const cases: [string, number][] = [
    ['0', 0],
    ['4096', 4096],
    ['64K', 64 * 1024],
    ['64k', 64 * 1024],
    ['1M', 1024 * 1024],
    ['512m', 512 * 1024 * 1024],
    ['10G', 10 * 1024 ** 3],
    ['2T', 2 * 1024 ** 4],
    ['007', 7],
    ['9007199254740991', Number.MAX_SAFE_INTEGER],
  ];
  for (const [text, bytes] of cases) t.equal(parseByteSize(text), bytes, text);
});

t.test('anything else is refused with a message saying what a size looks like', async (t) => {
  const bad = ['', ' 1K', '1K ', '1.5G', '-1', '+1', '1KB', '1KiB', '1 K', 'K', '10X', '0x10', '1e3', '１２', '12\n'];
  for (const text of bad) {
    t.throws(
      () => parseByteSize(text),
      { name: 'RangeError', message: /expected a size in bytes such as 4096, 64K/ },
      JSON.stringify(text),
    );
  }
});

t.test('a size past 2^53 is refused, not rounded', async (t) => {
  t.throws(() => parseByteSize('9007199254740992'), { message: /too large/ });
  t.throws(() => parseByteSize('9999999999T'), { message: /9999999999T is too large/ });
  t.throws(() => parseByteSize('99999999999999999'), { message: /expected a size/ }, '17 digits');
});
