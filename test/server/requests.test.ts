import t from 'tap';
import { createLogger } from '../../lib/log.js';
import { NbdError } from '../../lib/protocol/errors.js';
import { decodeSimpleReply, decodeStructuredChunkHeader, type Request } from '../../lib/protocol/transmission.js';
import { listContexts, type MetaContext, selectContexts } from '../../lib/server/meta-contexts.js';
import { errorReply, type Payload, type Session, serveRequest as serve, validateRequest } from '../../lib/server/requests.js';
import { patternBuffer } from '../helpers/bases.js';
import { FakeDevice } from '../helpers/fake-device.js';
import { hex } from '../helpers/hex.js';

/** The reply serveRequest builds (its errno is checked where it matters). */
async function serveRequest(r: Request, payload: Payload | undefined, s: Session): Promise<Buffer[]> {
  return (await serve(r, payload, s)).reply;
}

const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7 } as const;
const FLAG = { FUA: 1, NO_HOLE: 2, DF: 4, REQ_ONE: 8, FAST_ZERO: 16 } as const;
const EPERM = 1;
const EIO = 5;
const EINVAL = 22;
const ENOSPC = 28;
const EOVERFLOW = 75;
const ENOTSUP = 95;
const MiB = 1024 * 1024;
const SIZE = 64 * 1024;

const log = createLogger('silent');

function session(
  options: { writable?: boolean; structured?: boolean; contexts?: readonly MetaContext[]; size?: number } = {},
): Session & { device: FakeDevice } {
  const size = options.size ?? SIZE;
  return {
    device: new FakeDevice(size, {
      writable: options.writable ?? true,
      data: size <= MiB ? patternBuffer(size) : Buffer.alloc(size),
    }),
    structuredReplies: options.structured ?? false,
    contexts: options.contexts ?? [],
    log,
    allocate: (length) => Buffer.allocUnsafe(length),
  };
}

function req(type: number, fields: Partial<Request> = {}): Request {
  return { flags: 0, type, cookie: 0x1122334455667788n, offset: 0, length: 0, ...fields };
}

function errnoOf(err: NbdError | null): number | null {
  return err === null ? null : err.errno;
}

t.test('validateRequest: every rule', async (t) => {
  const rw = session();
  const ro = session({ writable: false });
  const sr = session({ structured: true });
  const withCtx = session({ structured: true, contexts: selectContexts(['base:allocation']) });
  type Case = [string, Request, Session, number | null];
  const cases: Case[] = [
    ['READ in range', req(CMD.READ, { offset: 512, length: 512 }), rw, null],
    ['READ to the exact end', req(CMD.READ, { offset: SIZE - 1, length: 1 }), rw, null],
    ['READ length 0 at the end', req(CMD.READ, { offset: SIZE, length: 0 }), rw, null],
    ['unknown command 8', req(8), rw, EINVAL],
    ['unknown command 0xffff', req(0xffff), rw, EINVAL],
    ['READ with NO_HOLE', req(CMD.READ, { flags: FLAG.NO_HOLE, length: 1 }), rw, EINVAL],
    ['READ with an undefined flag bit', req(CMD.READ, { flags: 0x8000, length: 1 }), rw, EINVAL],
    ['WRITE with DF', req(CMD.WRITE, { flags: FLAG.DF, length: 1 }), sr, EINVAL],
    ['WRITE with FUA', req(CMD.WRITE, { flags: FLAG.FUA, length: 1 }), rw, null],
    ['FLUSH with FUA is tolerated', req(CMD.FLUSH, { flags: FLAG.FUA }), rw, null],
    ['CACHE with FUA is tolerated', req(CMD.CACHE, { flags: FLAG.FUA, length: 1 }), rw, null],
    ['TRIM with NO_HOLE', req(CMD.TRIM, { flags: FLAG.NO_HOLE, length: 1 }), rw, EINVAL],
    ['WRITE_ZEROES with NO_HOLE|FAST_ZERO|FUA', req(CMD.WRITE_ZEROES, { flags: 0x13, length: 1 }), rw, null],
    ['BLOCK_STATUS with REQ_ONE', req(CMD.BLOCK_STATUS, { flags: FLAG.REQ_ONE, length: 1 }), withCtx, null],
    ['READ with DF without structured replies', req(CMD.READ, { flags: FLAG.DF, length: 1 }), rw, EINVAL],
    ['READ with DF and structured replies', req(CMD.READ, { flags: FLAG.DF, length: 1 }), sr, null],
    ['WRITE on read-only', req(CMD.WRITE, { length: 1 }), ro, EPERM],
    ['TRIM on read-only', req(CMD.TRIM, { length: 1 }), ro, EPERM],
    ['WRITE_ZEROES on read-only', req(CMD.WRITE_ZEROES, { length: 1 }), ro, EPERM],
    ['WRITE past end on read-only is EPERM', req(CMD.WRITE, { offset: SIZE, length: 1 }), ro, EPERM],
    ['READ on read-only', req(CMD.READ, { length: 1 }), ro, null],
    ['FLUSH on read-only', req(CMD.FLUSH), ro, null],
    ['CACHE on read-only', req(CMD.CACHE, { length: 1 }), ro, null],
    ['FLUSH with an offset', req(CMD.FLUSH, { offset: 512 }), rw, EINVAL],
    ['FLUSH with a length', req(CMD.FLUSH, { length: 512 }), rw, EINVAL],
    ['READ of 48 MiB (more than the advertised 32 MiB)', req(CMD.READ, { length: 48 * MiB }), session({ size: 128 * MiB }), null],
    ['READ of 64 MiB', req(CMD.READ, { length: 64 * MiB }), session({ size: 128 * MiB }), null],
    ['READ of 64 MiB + 1', req(CMD.READ, { length: 64 * MiB + 1 }), session({ size: 128 * MiB }), EINVAL],
    ['WRITE of 48 MiB', req(CMD.WRITE, { length: 48 * MiB }), session({ size: 128 * MiB }), null],
    ['WRITE of 64 MiB + 1 is EINVAL, not ENOSPC', req(CMD.WRITE, { length: 64 * MiB + 1 }), session({ size: 64 * MiB }), EINVAL],
    ['TRIM above 32 MiB is fine', req(CMD.TRIM, { length: 40 * MiB }), session({ size: 64 * MiB }), null],
    ['WRITE_ZEROES above 32 MiB is fine', req(CMD.WRITE_ZEROES, { length: 40 * MiB }), session({ size: 64 * MiB }), null],
    ['READ past end', req(CMD.READ, { offset: SIZE - 1, length: 2 }), rw, EINVAL],
    ['READ at the end', req(CMD.READ, { offset: SIZE, length: 1 }), rw, EINVAL],
    ['WRITE past end', req(CMD.WRITE, { offset: SIZE - 1, length: 2 }), rw, ENOSPC],
    ['WRITE_ZEROES past end', req(CMD.WRITE_ZEROES, { offset: SIZE, length: 1 }), rw, ENOSPC],
    ['TRIM past end', req(CMD.TRIM, { offset: SIZE, length: 1 }), rw, EINVAL],
    ['CACHE past end', req(CMD.CACHE, { offset: SIZE, length: 1 }), rw, EINVAL],
    ['BLOCK_STATUS past end', req(CMD.BLOCK_STATUS, { offset: SIZE, length: 1 }), withCtx, EINVAL],
    ['READ at offset 2^64 - 1', req(CMD.READ, { offset: 2 ** 64, length: 1 }), rw, EINVAL],
    ['WRITE at offset 2^63', req(CMD.WRITE, { offset: 2 ** 63, length: 0 }), rw, ENOSPC],
    ['BLOCK_STATUS without contexts', req(CMD.BLOCK_STATUS, { length: 1 }), sr, EINVAL],
    ['BLOCK_STATUS without structured replies', req(CMD.BLOCK_STATUS, { length: 1 }), rw, EINVAL],
  ];
  for (const [name, request, s, expected] of cases) {
    const result = validateRequest(request, s);
    t.equal(errnoOf(result), expected, name);
    if (result !== null) t.type(result, NbdError, `${name}: an NbdError`);
  }
});

t.test('refusal messages name the command', async (t) => {
  t.match(
    validateRequest(req(CMD.WRITE, { length: 1 }), session({ writable: false }))?.message,
    /NBD_CMD_WRITE on a read-only export/,
  );
  t.match(validateRequest(req(9), session())?.message, /unknown command 9/);
  t.match(validateRequest(req(CMD.READ, { offset: SIZE, length: 1 }), session())?.message, /past the end/);
});

t.test('errorReply uses the negotiated reply style', async (t) => {
  const err = new NbdError(ENOSPC, 'full');
  const r = req(CMD.WRITE);
  t.strictSame(errorReply(r, err, session()), [hex`67446698 0000001c 1122334455667788`]);
  t.strictSame(errorReply(r, err, session({ structured: true })), [
    hex`668e33ef 0001 8001 1122334455667788 0000000a 0000001c 0004 66756c6c`,
  ]);
});

t.test('READ with simple replies: header then data', async (t) => {
  const s = session();
  const reply = await serveRequest(req(CMD.READ, { offset: 100, length: 50 }), undefined, s);
  t.equal(reply.length, 2);
  t.strictSame(reply[0], hex`67446698 00000000 1122334455667788`);
  t.strictSame(reply[1], s.device.data.subarray(100, 150));
});

t.test('READ with structured replies: one OFFSET_DATA chunk with DONE', async (t) => {
  const s = session({ structured: true });
  const reply = await serveRequest(req(CMD.READ, { offset: 4096, length: 512, flags: FLAG.DF }), undefined, s);
  t.equal(reply.length, 2);
  t.strictSame(reply[0], hex`668e33ef 0001 0001 1122334455667788 00000208 0000000000001000`);
  t.strictSame(reply[1], s.device.data.subarray(4096, 4608));
});

t.test('READ of length 0 replies success without data', async (t) => {
  t.strictSame(await serveRequest(req(CMD.READ), undefined, session()), [hex`67446698 00000000 1122334455667788`]);
  t.strictSame(await serveRequest(req(CMD.READ), undefined, session({ structured: true })), [
    hex`668e33ef 0001 0000 1122334455667788 00000000`,
  ]);
});

t.test('READ errors: simple reply without data, or an error chunk (never a simple reply with SR)', async (t) => {
  const simple = session();
  simple.device.failNext('read', Object.assign(new Error('disk gone'), { code: 'EIO' }));
  t.strictSame(await serveRequest(req(CMD.READ, { length: 8 }), undefined, simple), [hex`67446698 00000005 1122334455667788`]);

  const sr = session({ structured: true });
  sr.device.failNext('read', Object.assign(new Error('disk gone'), { code: 'EIO' }));
  const reply = await serveRequest(req(CMD.READ, { length: 8 }), undefined, sr);
  t.equal(reply.length, 1);
  const header = decodeStructuredChunkHeader(reply[0] as Buffer);
  t.strictSame(header, { flags: 1, type: 0x8001, cookie: 0x1122334455667788n, length: 6 + 9 });
  t.equal(reply[0]?.readUInt32BE(20), EIO);
  t.equal(reply[0]?.subarray(26).toString(), 'disk gone', 'the message travels');

  const invalid = await serveRequest(req(CMD.READ, { offset: SIZE, length: 1 }), undefined, sr);
  t.equal(decodeStructuredChunkHeader(invalid[0] as Buffer).type, 0x8001, 'EINVAL as an error chunk too');
  t.equal(invalid[0]?.readUInt32BE(20), EINVAL);
});

t.test('WRITE stores the payload and passes FUA', async (t) => {
  const s = session();
  const payload = hex`0102030405`;
  const reply = await serveRequest(req(CMD.WRITE, { offset: 10, length: 5, flags: FLAG.FUA }), payload, s);
  t.strictSame(reply, [hex`67446698 00000000 1122334455667788`]);
  t.strictSame(s.device.data.subarray(10, 15), payload);
  t.strictSame(s.device.calls, [{ op: 'write', offset: 10, length: 5, options: { fua: true } }]);
  const sr = session({ structured: true });
  t.strictSame(await serveRequest(req(CMD.WRITE, { length: 1 }), hex`ff`, sr), [
    hex`668e33ef 0001 0000 1122334455667788 00000000`,
  ]);
});

t.test('WRITE with a payload in pieces: writev when the device has it, else joined', async (t) => {
  const pieces = [hex`0102`, hex`030405`, hex`06`];
  const joined = session();
  await serveRequest(req(CMD.WRITE, { offset: 20, length: 6 }), pieces, joined);
  t.strictSame(joined.device.data.subarray(20, 26), hex`010203040506`, 'a device without writev gets one buffer');
  t.strictSame(joined.device.calls, [{ op: 'write', offset: 20, length: 6, options: { fua: false } }]);

  const gathered = session();
  const seen: { offset: number; lengths: number[]; fua: boolean }[] = [];
  Object.assign(gathered.device, {
    writev: async (offset: number, chunks: readonly Buffer[], options: { fua: boolean }) => {
      seen.push({ offset, lengths: chunks.map((c) => c.length), fua: options.fua });
    },
  });
  const reply = await serveRequest(req(CMD.WRITE, { offset: 30, length: 6, flags: FLAG.FUA }), pieces, gathered);
  t.strictSame(reply, [hex`67446698 00000000 1122334455667788`]);
  t.strictSame(seen, [{ offset: 30, lengths: [2, 3, 1], fua: true }], 'the pieces go to writev as they are');
  t.strictSame(gathered.device.calls, [], 'and write() is not called');
});

t.test('zero-length write-type requests succeed without touching the device', async (t) => {
  const s = session();
  for (const type of [CMD.WRITE, CMD.TRIM, CMD.WRITE_ZEROES, CMD.CACHE]) {
    const reply = await serveRequest(req(type, { offset: 8 }), undefined, s);
    t.equal(decodeSimpleReply(reply[0] as Buffer).error, 0, `type ${type}`);
  }
  t.strictSame(s.device.calls, []);
});

t.test('FLUSH, TRIM, CACHE and WRITE_ZEROES reach the device with their flags', async (t) => {
  const s = session();
  for (const r of [
    req(CMD.FLUSH),
    req(CMD.TRIM, { offset: 512, length: 512, flags: FLAG.FUA }),
    req(CMD.CACHE, { offset: 0, length: 4096 }),
    req(CMD.WRITE_ZEROES, { offset: 1024, length: 512 }),
    req(CMD.WRITE_ZEROES, { offset: 2048, length: 512, flags: FLAG.NO_HOLE | FLAG.FUA }),
    req(CMD.WRITE_ZEROES, { offset: 3072, length: 512, flags: FLAG.FAST_ZERO }),
  ]) {
    const reply = await serveRequest(r, undefined, s);
    t.equal(decodeSimpleReply(reply[0] as Buffer).error, 0, `type ${r.type} flags ${r.flags}`);
  }
  t.strictSame(s.device.calls, [
    { op: 'flush' },
    { op: 'trim', offset: 512, length: 512, options: { fua: true } },
    { op: 'cache', offset: 0, length: 4096 },
    { op: 'zero', offset: 1024, length: 512, options: { fua: false, noHole: false } },
    { op: 'zero', offset: 2048, length: 512, options: { fua: true, noHole: true } },
    { op: 'zero', offset: 3072, length: 512, options: { fua: false, noHole: false } },
  ]);
  t.ok(
    s.device.data.subarray(1024, 1536).every((b) => b === 0),
    'zeroed',
  );
});

t.test('FAST_ZERO with NO_HOLE fails fast with ENOTSUP and leaves data alone', async (t) => {
  const s = session();
  const before = Buffer.from(s.device.data);
  const reply = await serveRequest(req(CMD.WRITE_ZEROES, { length: 512, flags: FLAG.NO_HOLE | FLAG.FAST_ZERO }), undefined, s);
  t.equal(decodeSimpleReply(reply[0] as Buffer).error, ENOTSUP);
  t.strictSame(s.device.calls, [], 'the device is not touched');
  t.strictSame(s.device.data, before);
});

t.test('block-layer errors map through the errno table', async (t) => {
  const coded = (code: string): Error => Object.assign(new Error(code), { code });
  const cases: [string, Request, 'read' | 'write' | 'zero', unknown, number][] = [
    ['ENOSPC on write', req(CMD.WRITE, { length: 1 }), 'write', coded('ENOSPC'), ENOSPC],
    ['EDQUOT on write', req(CMD.WRITE, { length: 1 }), 'write', coded('EDQUOT'), ENOSPC],
    ['EROFS on write', req(CMD.WRITE, { length: 1 }), 'write', coded('EROFS'), EPERM],
    ['EOVERFLOW on read without DF', req(CMD.READ, { length: 1 }), 'read', coded('EOVERFLOW'), EINVAL],
    ['ENOTSUP on zero without FAST_ZERO', req(CMD.WRITE_ZEROES, { length: 1 }), 'zero', coded('ENOTSUP'), EINVAL],
    [
      'ENOTSUP on zero with FAST_ZERO',
      req(CMD.WRITE_ZEROES, { length: 1, flags: FLAG.FAST_ZERO }),
      'zero',
      coded('ENOTSUP'),
      ENOTSUP,
    ],
    ['unknown code', req(CMD.WRITE, { length: 1 }), 'write', coded('EWEIRD'), EINVAL],
    ['a thrown string', req(CMD.WRITE, { length: 1 }), 'write', 'oops', EIO],
    ['an NbdError', req(CMD.WRITE, { length: 1 }), 'write', new NbdError(EOVERFLOW, 'x'), EOVERFLOW],
  ];
  for (const [name, r, op, error, errno] of cases) {
    const s = session();
    s.device.failNext(op, error);
    const reply = await serveRequest(r, op === 'write' ? hex`00` : undefined, s);
    t.equal(decodeSimpleReply(reply[0] as Buffer).error, errno, name);
  }
  const s = session({ structured: true });
  s.device.failNext('read', coded('EOVERFLOW'));
  const reply = await serveRequest(req(CMD.READ, { length: 1, flags: FLAG.DF }), undefined, s);
  t.equal(reply[0]?.readUInt32BE(20), EOVERFLOW, 'EOVERFLOW on read with DF');
});

t.test('BLOCK_STATUS: one chunk per context, DONE only on the last, equal neighbours merged', async (t) => {
  const contexts = selectContexts(['base:allocation', 'qemu:allocation-depth']);
  const s = session({ structured: true, contexts, size: 4096 });
  s.device.setState('data', 0, 1024);
  s.device.setState('zero', 1024, 1536);
  const reply = await serveRequest(req(CMD.BLOCK_STATUS, { length: 4096 }), undefined, s);
  t.strictSame(reply, [
    hex`668e33ef 0000 0005 1122334455667788 0000001c # not DONE, length 4 + 3 * 8
        00000001                                     # base:allocation
        00000400 00000000                            # data
        00000200 00000003                            # zero: HOLE|ZERO
        00000a00 00000000                            # base`,
    hex`668e33ef 0001 0005 1122334455667788 00000014 # DONE, length 4 + 2 * 8
        00000002                                     # qemu:allocation-depth
        00000600 00000001                            # data and zero merge: both in the overlay
        00000a00 00000002                            # base`,
  ]);
});

t.test('BLOCK_STATUS: REQ_ONE gives one extent no longer than the request', async (t) => {
  const s = session({ structured: true, contexts: selectContexts(['base:allocation']), size: 4096 });
  s.device.setState('data', 0, 1024);
  const reply = await serveRequest(req(CMD.BLOCK_STATUS, { length: 512, flags: FLAG.REQ_ONE }), undefined, s);
  t.strictSame(reply, [hex`668e33ef 0001 0005 1122334455667788 0000000c 00000001 00000200 00000000`]);
  const whole = await serveRequest(req(CMD.BLOCK_STATUS, { offset: 1000, length: 3096, flags: FLAG.REQ_ONE }), undefined, s);
  t.strictSame(
    whole,
    [hex`668e33ef 0001 0005 1122334455667788 0000000c 00000001 00000018 00000000`],
    'stops at the state change',
  );
});

t.test('BLOCK_STATUS of length 0 still describes at least one byte', async (t) => {
  const s = session({ structured: true, contexts: listContexts(['base:allocation']).map((c) => ({ ...c, id: 1 })), size: 4096 });
  const reply = await serveRequest(req(CMD.BLOCK_STATUS, { offset: 100 }), undefined, s);
  const header = decodeStructuredChunkHeader(reply[0] as Buffer);
  t.equal(header.type, 5);
  t.equal(header.length, 12);
  t.ok((reply[0]?.readUInt32BE(24) ?? 0) >= 1);
});

t.test('BLOCK_STATUS: a device returning no extents is EINVAL', async (t) => {
  const s = session({ structured: true, contexts: selectContexts(['base:allocation']), size: 4096 });
  s.device.extents = async () => [];
  const reply = await serveRequest(req(CMD.BLOCK_STATUS, { length: 512 }), undefined, s);
  t.equal(decodeStructuredChunkHeader(reply[0] as Buffer).type, 0x8001);
  t.equal(reply[0]?.readUInt32BE(20), EINVAL);
});

t.test('refused requests never reach the device', async (t) => {
  const s = session({ writable: false });
  await serveRequest(req(CMD.WRITE, { length: 1 }), hex`00`, s);
  await serveRequest(req(CMD.READ, { offset: SIZE, length: 1 }), undefined, s);
  await serveRequest(req(12), undefined, s);
  t.strictSame(s.device.calls, []);
});

t.test('serveRequest reports the errno each reply carries', async (t) => {
  const s = session({ structured: true });
  t.equal((await serve(req(CMD.READ, { length: 8 }), undefined, s)).errno, 0, 'success: 0');
  t.equal((await serve(req(CMD.READ, { offset: SIZE, length: 1 }), undefined, s)).errno, EINVAL, 'refused: EINVAL');
  t.equal((await serve(req(12), undefined, s)).errno, EINVAL, 'unknown command: EINVAL');
  const ro = session({ writable: false });
  t.equal((await serve(req(CMD.WRITE, { length: 1 }), hex`00`, ro)).errno, 1, 'read-only: EPERM');
});
