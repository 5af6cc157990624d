import t from 'tap';
import { ConfigError } from '../../lib/config/config-error.js';

t.test('the message is FILE:LINE:COL: KEY.PATH: what is wrong, as compilers write it', async (t) => {
  const err = new ConfigError(
    { file: '/etc/nbd-cow/lab.yaml', line: 14, column: 5, keyPath: 'exports.debian.block-size' },
    '3000 is not a power of two from 512 to 1048576',
  );
  t.equal(err.message, '/etc/nbd-cow/lab.yaml:14:5: exports.debian.block-size: 3000 is not a power of two from 512 to 1048576');
  t.ok(err instanceof Error);
  t.equal(err.name, 'ConfigError');
  t.strictSame(
    { file: err.file, line: err.line, column: err.column, keyPath: err.keyPath, reason: err.reason },
    {
      file: '/etc/nbd-cow/lab.yaml',
      line: 14,
      column: 5,
      keyPath: 'exports.debian.block-size',
      reason: '3000 is not a power of two from 512 to 1048576',
    },
  );
});

t.test('parts that do not apply are left out', async (t) => {
  t.equal(new ConfigError({ file: 'lab.yaml' }, 'no such file').message, 'lab.yaml: no such file');
  t.equal(new ConfigError({ file: 'lab.yaml', line: 3, column: 1 }, 'not valid YAML').message, 'lab.yaml:3:1: not valid YAML');
  t.equal(new ConfigError({ file: 'lab.yaml', line: 3 }, 'x').message, 'lab.yaml:3:1: x', 'a line without a column is column 1');
  t.equal(new ConfigError({ file: 'lab.yaml', keyPath: 'listen' }, 'x').message, 'lab.yaml: listen: x');
  const bare = new ConfigError({ file: 'lab.yaml' }, 'x');
  t.equal(bare.line, undefined);
  t.equal(bare.column, undefined);
  t.equal(bare.keyPath, undefined);
});
