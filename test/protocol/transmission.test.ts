import t from 'tap';
import { ProtocolError } from '../../lib/protocol/errors.js';
import {
  decodeRequest,
  decodeSimpleReply,
  decodeStructuredChunkHeader,
  encodeBlockStatusChunk,
  encodeErrorChunk,
  encodeNoneChunk,
  encodeOffsetDataHeader,
  encodeOffsetHoleChunk,
  encodeRequest,
  encodeSimpleReply,
  REQUEST_SIZE,
  type Request,
  SIMPLE_REPLY_SIZE,
  STRUCTURED_HEADER_SIZE,
  type StructuredChunkHeader,
} from '../../lib/protocol/transmission.js';
import { testParseGenerate } from '../helpers/codec.js';
import { hex } from '../helpers/hex.js';

/**
 * A structured chunk: the encoder's exact bytes, the header decoded from them, and the
 * payload after the header.
 */
function testChunk(name: string, header: StructuredChunkHeader, payload: Buffer, bytes: Buffer, encode: () => Buffer): void {
  t.test(name, async (t) => {
    const out = encode();
    t.strictSame(out, bytes, 'encode');
    t.strictSame(decodeStructuredChunkHeader(bytes), header, 'decode header');
    t.strictSame(bytes.subarray(STRUCTURED_HEADER_SIZE), payload, 'payload');
    t.strictSame(decodeStructuredChunkHeader(out), header, 'round trip');
  });
}

t.test('sizes', async (t) => {
  t.equal(REQUEST_SIZE, 28);
  t.equal(SIMPLE_REPLY_SIZE, 16);
  t.equal(STRUCTURED_HEADER_SIZE, 20);
});

testParseGenerate<Request>(
  'request: WRITE with FUA',
  { flags: 1, type: 1, cookie: 0x0102030405060708n, offset: 4096, length: 512 },
  hex`25609513         # NBD_REQUEST_MAGIC
      0001 0001        # flags=FUA type=WRITE
      0102030405060708 # cookie
      0000000000001000 # offset 4096
      00000200         # length 512`,
  (buf) => decodeRequest(buf),
  encodeRequest,
);

testParseGenerate<Request>(
  'request: READ, cookie with the high bit set survives',
  { flags: 0, type: 0, cookie: 0xffeeddccbbaa9988n, offset: 0, length: 0xffffffff },
  hex`25609513 0000 0000 ffeeddccbbaa9988 0000000000000000 ffffffff`,
  (buf) => decodeRequest(buf),
  encodeRequest,
);

testParseGenerate<Request>(
  'request: offset above 32 bits',
  { flags: 0x0008, type: 7, cookie: 1n, offset: 0x123456789a, length: 65536 },
  hex`25609513 0008 0007 0000000000000001 000000123456789a 00010000`,
  (buf) => decodeRequest(buf),
  encodeRequest,
);

testParseGenerate<Request>(
  'request: offset 2^53 - 1 is exact',
  { flags: 0, type: 0, cookie: 0n, offset: Number.MAX_SAFE_INTEGER, length: 1 },
  hex`25609513 0000 0000 0000000000000000 001fffffffffffff 00000001`,
  (buf) => decodeRequest(buf),
  encodeRequest,
);

t.test('request: offsets beyond 2^53 still compare greater than any size', async (t) => {
  for (const offsetHex of ['0020000000000001', '8000000000000000', 'ffffffffffffffff', 'fffffffffffff800']) {
    const req = decodeRequest(hex`25609513 0000 0000 0000000000000000 ${offsetHex} 00000001`);
    t.ok(req.offset > Number.MAX_SAFE_INTEGER, `0x${offsetHex} decodes above MAX_SAFE_INTEGER`);
    t.ok(req.offset + req.length > Number.MAX_SAFE_INTEGER, `0x${offsetHex} + length is past any export`);
    t.ok(Number.isFinite(req.offset), 'finite');
  }
});

t.test('request: at an offset, bad magic, short', async (t) => {
  const body = hex`25609513 0000 0002 0000000000000009 0000000000000000 00000000`;
  t.strictSame(decodeRequest(Buffer.concat([hex`aabbcc`, body]), 3), { flags: 0, type: 2, cookie: 9n, offset: 0, length: 0 });
  t.throws(
    () => decodeRequest(hex`25609514 0000 0000 0000000000000000 0000000000000000 00000000`),
    { name: 'ProtocolError', message: /bad request magic 0x25609514/ },
    'the nbd-server transaction log magic is refused',
  );
  t.throws(() => decodeRequest(hex`67446698 0000 0000 0000000000000000 0000000000000000 00000000`), ProtocolError);
  t.throws(() => decodeRequest(body.subarray(0, 27)), RangeError, '27 bytes');
});

testParseGenerate(
  'simple reply: success',
  { error: 0, cookie: 0x0102030405060708n },
  hex`67446698         # NBD_SIMPLE_REPLY_MAGIC
      00000000         # error 0
      0102030405060708 # cookie`,
  (buf) => decodeSimpleReply(buf),
  (o) => encodeSimpleReply(o.error, o.cookie),
);

testParseGenerate(
  'simple reply: ENOSPC, high-bit cookie',
  { error: 28, cookie: 0x8000000000000001n },
  hex`67446698 0000001c 8000000000000001`,
  (buf) => decodeSimpleReply(buf),
  (o) => encodeSimpleReply(o.error, o.cookie),
);

t.test('simple reply: bad magic, short', async (t) => {
  t.throws(() => decodeSimpleReply(hex`668e33ef 00000000 0000000000000000`), ProtocolError);
  t.throws(() => decodeSimpleReply(hex`67446698 00000000 00000000000000`), RangeError);
});

testChunk(
  'chunk: NBD_REPLY_TYPE_NONE with DONE',
  { flags: 1, type: 0, cookie: 0xaabbccddeeff0011n, length: 0 },
  hex``,
  hex`668e33ef         # NBD_STRUCTURED_REPLY_MAGIC
      0001             # flags DONE
      0000             # NBD_REPLY_TYPE_NONE
      aabbccddeeff0011 # cookie
      00000000         # length 0`,
  () => encodeNoneChunk(0xaabbccddeeff0011n),
);

testChunk(
  'chunk: OFFSET_DATA header for 512 bytes, done',
  { flags: 1, type: 1, cookie: 7n, length: 520 },
  hex`0000000000001000`,
  hex`668e33ef 0001 0001 # DONE, NBD_REPLY_TYPE_OFFSET_DATA
      0000000000000007   # cookie
      00000208           # length 8 + 512
      0000000000001000   # offset 4096 (the data follows in a separate write)`,
  () => encodeOffsetDataHeader(7n, 4096, 512, true),
);

testChunk(
  'chunk: OFFSET_DATA header, not done, offset above 32 bits',
  { flags: 0, type: 1, cookie: 7n, length: 9 },
  hex`0000010000000000`,
  hex`668e33ef 0000 0001 0000000000000007 00000009 0000010000000000`,
  () => encodeOffsetDataHeader(7n, 2 ** 40, 1, false),
);

testChunk(
  'chunk: OFFSET_HOLE',
  { flags: 0, type: 2, cookie: 3n, length: 12 },
  hex`0000000000002000 00001000`,
  hex`668e33ef 0000 0002 # NBD_REPLY_TYPE_OFFSET_HOLE
      0000000000000003   # cookie
      0000000c           # length 12
      0000000000002000   # offset 8192
      00001000           # hole size 4096`,
  () => encodeOffsetHoleChunk(3n, 8192, 4096, false),
);

testChunk(
  'chunk: OFFSET_HOLE, done',
  { flags: 1, type: 2, cookie: 3n, length: 12 },
  hex`0000000000000000 00000200`,
  hex`668e33ef 0001 0002 0000000000000003 0000000c 0000000000000000 00000200`,
  () => encodeOffsetHoleChunk(3n, 0, 512, true),
);

testChunk(
  'chunk: ERROR with a message',
  { flags: 1, type: 0x8001, cookie: 0xffffffffffffffffn, length: 8 },
  hex`00000016 0002 6869`,
  hex`668e33ef 0001 8001 # DONE, NBD_REPLY_TYPE_ERROR
      ffffffffffffffff   # cookie
      00000008           # length 6 + 2
      00000016           # EINVAL
      0002               # message length
      6869               # "hi"`,
  () => encodeErrorChunk(0xffffffffffffffffn, 22, 'hi'),
);

testChunk(
  'chunk: ERROR without a message',
  { flags: 1, type: 0x8001, cookie: 1n, length: 6 },
  hex`0000001c 0000`,
  hex`668e33ef 0001 8001 0000000000000001 00000006 0000001c 0000`,
  () => encodeErrorChunk(1n, 28, ''),
);

t.test('chunk: ERROR message is capped at 4096 bytes (proto.md string limit)', async (t) => {
  const chunk = encodeErrorChunk(1n, 5, 'x'.repeat(5000));
  const header = decodeStructuredChunkHeader(chunk);
  t.equal(header.length, 6 + 4096);
  t.equal(chunk.readUInt16BE(24), 4096);
  t.equal(chunk.length, 20 + 6 + 4096);
});

testChunk(
  'chunk: BLOCK_STATUS with two descriptors',
  { flags: 1, type: 5, cookie: 9n, length: 20 },
  hex`00000001 00001000 00000000 00000200 00000003`,
  hex`668e33ef 0001 0005 # DONE, NBD_REPLY_TYPE_BLOCK_STATUS
      0000000000000009   # cookie
      00000014           # length 4 + 2 * 8
      00000001           # context id 1
      00001000 00000000  # 4096 bytes: data
      00000200 00000003  # 512 bytes: HOLE|ZERO`,
  () =>
    encodeBlockStatusChunk(
      9n,
      1,
      [
        { length: 4096, flags: 0 },
        { length: 512, flags: 3 },
      ],
      true,
    ),
);

testChunk(
  'chunk: BLOCK_STATUS not done, status with bit 31',
  { flags: 0, type: 5, cookie: 9n, length: 12 },
  hex`00000002 00000200 80000002`,
  hex`668e33ef 0000 0005 0000000000000009 0000000c 00000002 00000200 80000002`,
  () => encodeBlockStatusChunk(9n, 2, [{ length: 512, flags: 0x80000002 }], false),
);

t.test('structured chunk header: at an offset, bad magic, short', async (t) => {
  t.strictSame(decodeStructuredChunkHeader(Buffer.concat([hex`00`, encodeNoneChunk(5n)]), 1), {
    flags: 1,
    type: 0,
    cookie: 5n,
    length: 0,
  });
  t.throws(() => decodeStructuredChunkHeader(hex`668e33ef 0001 0000 0000000000000000`), RangeError, '16 bytes');
  t.throws(() => decodeStructuredChunkHeader(hex`67446698 0001 0000 0000000000000000 00000000`), ProtocolError);
});
