import t from 'tap';
import { NbdError, OptionError, ProtocolError, toNbdErrno } from '../../lib/protocol/errors.js';

function coded(code: unknown): Error {
  return Object.assign(new Error(`fails with ${String(code)}`), { code });
}

t.test('error classes carry their name and number', async (t) => {
  const nbd = new NbdError(28, 'full');
  t.type(nbd, Error);
  t.equal(nbd.name, 'NbdError');
  t.equal(nbd.errno, 28);
  t.equal(nbd.message, 'full');
  const proto = new ProtocolError('bad magic');
  t.type(proto, Error);
  t.equal(proto.name, 'ProtocolError');
  const opt = new OptionError(0x80000003, 'bad');
  t.type(opt, Error);
  t.equal(opt.name, 'OptionError');
  t.equal(opt.replyType, 0x80000003);
  t.notOk((proto as Error) instanceof NbdError, 'the classes are distinct');
});

t.test('toNbdErrno maps system codes (nbdkit nbd_errno)', async (t) => {
  const cases: [string, number][] = [
    ['EPERM', 1],
    ['EROFS', 1],
    ['EACCES', 1],
    ['EIO', 5],
    ['ENOMEM', 12],
    ['EINVAL', 22],
    ['ENOSPC', 28],
    ['EDQUOT', 28],
    ['EFBIG', 28],
    ['ESHUTDOWN', 108],
    ['EBADF', 22],
    ['ENOENT', 22],
    ['EWHATEVER', 22],
    ['', 22],
  ];
  for (const [code, errno] of cases) t.equal(toNbdErrno(coded(code)), errno, `${code || '(empty code)'} -> ${errno}`);
});

t.test('EOVERFLOW only with DF', async (t) => {
  t.equal(toNbdErrno(coded('EOVERFLOW')), 22);
  t.equal(toNbdErrno(coded('EOVERFLOW'), { df: false }), 22);
  t.equal(toNbdErrno(coded('EOVERFLOW'), { df: true }), 75);
  t.equal(toNbdErrno(coded('EOVERFLOW'), { fastZero: true }), 22);
});

t.test('ENOTSUP only with FAST_ZERO', async (t) => {
  for (const code of ['ENOTSUP', 'EOPNOTSUPP']) {
    t.equal(toNbdErrno(coded(code)), 22, `${code} without FAST_ZERO`);
    t.equal(toNbdErrno(coded(code), { df: true }), 22, `${code} with DF only`);
    t.equal(toNbdErrno(coded(code), { fastZero: true }), 95, `${code} with FAST_ZERO`);
  }
});

t.test('NbdError passes through unchanged', async (t) => {
  t.equal(toNbdErrno(new NbdError(75, 'x')), 75);
  t.equal(toNbdErrno(new NbdError(95, 'x'), {}), 95, 'even values the context would not allow');
  t.equal(toNbdErrno(Object.assign(new NbdError(1, 'x'), { code: 'ENOSPC' })), 1, 'errno wins over a code');
});

t.test('non-errors and errors without a string code are EIO', async (t) => {
  t.equal(toNbdErrno(undefined), 5);
  t.equal(toNbdErrno(null), 5);
  t.equal(toNbdErrno('ENOSPC'), 5, 'a bare string is not a coded error');
  t.equal(toNbdErrno(28), 5);
  t.equal(toNbdErrno(new Error('plain')), 5);
  t.equal(toNbdErrno(coded(28)), 5, 'numeric code');
  t.equal(toNbdErrno({ code: 'ENOSPC' }), 28, 'a plain object with a code is mapped');
});

t.test(
  'inherited names do not leak through the table',
  // lib/protocol/errors.ts: `SYSTEM_TO_NBD[code] ?? NBD_EINVAL` on a plain object literal returns
  // Object.prototype members (a function for 'toString') instead of a number.
  async (t) => {
    t.equal(toNbdErrno(coded('toString')), 22);
    t.equal(toNbdErrno(coded('constructor')), 22);
    t.equal(toNbdErrno(coded('__proto__')), 22);
  },
);
