import t, { type Test } from 'tap';
import { OptionError, ProtocolError } from '../../lib/protocol/errors.js';
import {
  CLIENT_FLAGS_SIZE,
  decodeClientFlags,
  decodeInfoRequest,
  decodeMetaContextRequest,
  decodeOptionHeader,
  decodeOptionReply,
  encodeExportNameReply,
  encodeGreeting,
  encodeInfoBlockSize,
  encodeInfoExport,
  encodeInfoRequest,
  encodeInfoText,
  encodeMetaContextPayload,
  encodeMetaContextRequest,
  encodeOptionHeader,
  encodeOptionReply,
  encodeServerReplyPayload,
  GREETING_SIZE,
  OPTION_HEADER_SIZE,
  OPTION_REPLY_HEADER_SIZE,
} from '../../lib/protocol/handshake.js';
import { testParseGenerate } from '../helpers/codec.js';
import { hex } from '../helpers/hex.js';

const ERR_INVALID = 0x80000003;

/** Encoders without a decoder in lib/: check the exact bytes. */
function testGenerate(name: string, bytes: Buffer, encode: () => Buffer): void {
  t.test(name, async (t) => {
    const out = encode();
    t.strictSame(out, bytes, 'encode');
    t.equal(out.length, bytes.length, 'exact allocation');
  });
}

function assertOptionInvalid(t: Test, fn: () => unknown, message: RegExp): void {
  try {
    fn();
    t.fail('expected an OptionError');
  } catch (err) {
    t.type(err, OptionError);
    t.equal((err as OptionError).replyType, ERR_INVALID, 'NBD_REP_ERR_INVALID');
    t.match((err as Error).message, message);
  }
}

t.test('sizes', async (t) => {
  t.equal(GREETING_SIZE, 18);
  t.equal(CLIENT_FLAGS_SIZE, 4);
  t.equal(OPTION_HEADER_SIZE, 16);
  t.equal(OPTION_REPLY_HEADER_SIZE, 20);
});

testGenerate(
  'greeting: NBDMAGIC IHAVEOPT and handshake flags',
  hex`4e42444d41474943 # "NBDMAGIC"
      49484156454f5054 # "IHAVEOPT"
      0003             # FIXED_NEWSTYLE | NO_ZEROES`,
  () => encodeGreeting(3),
);

t.test('client flags are a big-endian u32 at the offset', async (t) => {
  t.equal(decodeClientFlags(hex`00000003`), 3);
  t.equal(decodeClientFlags(hex`ff 80000001`, 1), 0x80000001);
  t.throws(() => decodeClientFlags(hex`000000`), RangeError, 'short buffer');
});

testParseGenerate(
  'option header: GO with 10 bytes of data',
  { option: 7, length: 10 },
  hex`49484156454f5054 # IHAVEOPT
      00000007         # NBD_OPT_GO
      0000000a         # length 10`,
  (buf) => decodeOptionHeader(buf),
  (o) => encodeOptionHeader(o.option, o.length),
);

testParseGenerate(
  'option header: unknown option, length 0xffffffff',
  { option: 0xdeadbeef, length: 0xffffffff },
  hex`49484156454f5054 deadbeef ffffffff`,
  (buf) => decodeOptionHeader(buf),
  (o) => encodeOptionHeader(o.option, o.length),
);

t.test('option header: at an offset, bad magic, short', async (t) => {
  t.strictSame(decodeOptionHeader(hex`aabb 49484156454f5054 00000001 00000000`, 2), { option: 1, length: 0 });
  t.throws(() => decodeOptionHeader(hex`4e42444d41474943 00000007 00000000`), ProtocolError, 'NBDMAGIC instead of IHAVEOPT');
  t.throws(() => decodeOptionHeader(hex`49484156454f5054 00000007 0000`), RangeError, '14 bytes');
});

testParseGenerate(
  'option reply: ACK to GO',
  { option: 7, replyType: 1, payload: Buffer.alloc(0) },
  hex`0003e889045565a9 # NBD_REP_MAGIC
      00000007         # NBD_OPT_GO
      00000001         # NBD_REP_ACK
      00000000         # length 0`,
  (buf) => decodeOptionReply(buf),
  (o) => encodeOptionReply(o.option, o.replyType, o.payload),
);

testParseGenerate(
  'option reply: ERR_UNSUP with a message',
  { option: 11, replyType: 0x80000001, payload: Buffer.from('no') },
  hex`0003e889045565a9 # NBD_REP_MAGIC
      0000000b         # NBD_OPT_EXTENDED_HEADERS
      80000001         # NBD_REP_ERR_UNSUP
      00000002         # length 2
      6e6f             # "no"`,
  (buf) => decodeOptionReply(buf),
  (o) => encodeOptionReply(o.option, o.replyType, o.payload),
);

t.test('option reply: no payload argument, malformed replies', async (t) => {
  t.strictSame(encodeOptionReply(3, 1), hex`0003e889045565a9 00000003 00000001 00000000`);
  t.throws(() => decodeOptionReply(hex`0003e889045565a9 00000003 00000001 00000004 6e6f`), ProtocolError, 'truncated payload');
  t.throws(() => decodeOptionReply(hex`0003e889045565aa 00000003 00000001 00000000`), ProtocolError, 'bad magic');
  t.strictSame(
    decodeOptionReply(hex`ff 0003e889045565a9 00000003 00000001 00000000`, 1),
    { option: 3, replyType: 1, payload: Buffer.alloc(0) },
    'at an offset',
  );
});

testGenerate(
  'EXPORT_NAME reply with the 124 zero bytes',
  hex`0000000000100000 # size 1 MiB
      044d             # transmission flags
      ${'00'.repeat(124)}`,
  () => encodeExportNameReply(1 << 20, 0x044d, false),
);

testGenerate(
  'EXPORT_NAME reply with NO_ZEROES',
  hex`0000000000100000 # size 1 MiB
      044d             # transmission flags`,
  () => encodeExportNameReply(1 << 20, 0x044d, true),
);

t.test('EXPORT_NAME reply lengths are 134 and 10', async (t) => {
  t.equal(encodeExportNameReply(0, 1, false).length, 134);
  t.equal(encodeExportNameReply(0, 1, true).length, 10);
  t.strictSame(encodeExportNameReply(2 ** 40, 1, true), hex`0000010000000000 0001`, 'size above 32 bits');
});

testGenerate(
  'NBD_INFO_EXPORT',
  hex`0000             # NBD_INFO_EXPORT
      0000000000100000 # size
      044d             # transmission flags`,
  () => encodeInfoExport(1 << 20, 0x044d),
);

testGenerate(
  'NBD_INFO_NAME',
  hex`0001         # NBD_INFO_NAME
      676f6c64656e # "golden"`,
  () => encodeInfoText(1, 'golden'),
);

testGenerate(
  'NBD_INFO_DESCRIPTION (UTF-8)',
  hex`0002       # NBD_INFO_DESCRIPTION
      6120c3a9   # "a é"`,
  () => encodeInfoText(2, 'a é'),
);

testGenerate('NBD_INFO_NAME empty', hex`0001`, () => encodeInfoText(1, ''));

testGenerate(
  'NBD_INFO_BLOCK_SIZE',
  hex`0003     # NBD_INFO_BLOCK_SIZE
      00000001 # minimum 1
      00001000 # preferred 4096
      02000000 # maximum payload 32 MiB`,
  () => encodeInfoBlockSize(1, 4096, 32 * 1024 * 1024),
);

testGenerate(
  'NBD_REP_SERVER payload',
  hex`00000006     # name length
      676f6c64656e # "golden"
      61206469736b # "a disk"`,
  () => encodeServerReplyPayload('golden', 'a disk'),
);

testGenerate('NBD_REP_SERVER payload without description', hex`00000001 78`, () => encodeServerReplyPayload('x', ''));

testGenerate(
  'NBD_REP_META_CONTEXT payload',
  hex`00000001                       # context id 1
      626173653a616c6c6f636174696f6e # "base:allocation"`,
  () => encodeMetaContextPayload(1, 'base:allocation'),
);

testGenerate(
  'option reply carrying NBD_INFO_EXPORT',
  hex`0003e889045565a9 00000007 00000003 0000000c # GO, NBD_REP_INFO, length 12
      0000 0000000000100000 0001`,
  () => encodeOptionReply(7, 3, encodeInfoExport(1 << 20, 1)),
);

// ---- NBD_OPT_INFO / NBD_OPT_GO data ---------------------------------------------------------

testParseGenerate(
  'info request: name and two info types',
  { exportName: 'golden', infoTypes: [1, 3] },
  hex`00000006     # name length
      676f6c64656e # "golden"
      0002         # 2 requests
      0001 0003    # NAME, BLOCK_SIZE`,
  decodeInfoRequest,
  (o) => encodeInfoRequest(o.exportName, o.infoTypes),
);

testParseGenerate(
  'info request: default export, no info types',
  { exportName: '', infoTypes: [] },
  hex`00000000 0000`,
  decodeInfoRequest,
  (o) => encodeInfoRequest(o.exportName, o.infoTypes),
);

testParseGenerate(
  'info request: unknown info types are kept for the handler to ignore',
  { exportName: 'a', infoTypes: [0xffff] },
  hex`00000001 61 0001 ffff`,
  decodeInfoRequest,
  (o) => encodeInfoRequest(o.exportName, o.infoTypes),
);

t.test('info request: a 4096-byte name is accepted', async (t) => {
  const name = 'n'.repeat(4096);
  t.equal(decodeInfoRequest(encodeInfoRequest(name, [])).exportName, name);
});

t.test('malformed info requests are NBD_REP_ERR_INVALID', async (t) => {
  const cases: [string, Buffer, RegExp][] = [
    ['empty', hex``, /too short for export name length/],
    ['truncated length', hex`000000`, /too short for export name length/],
    ['name longer than its data', hex`00000010 676f`, /too short for export name/],
    ['missing count', hex`00000000`, /too short for information request count/],
    ['count larger than the list', hex`00000000 0002 0001`, /too short for information request/],
    ['odd trailing byte in the list', hex`00000000 0001 0001 00`, /longer than its fields/],
    ['trailing bytes', hex`00000000 0000 ff`, /longer than its fields/],
    ['NUL in the name', hex`00000003 610062 0000`, /NUL/],
    ['4097-byte name', Buffer.concat([hex`00001001`, Buffer.alloc(4097, 0x61), hex`0000`]), /longer than 4096/],
    ['name length 0xffffffff', hex`ffffffff 0000`, /longer than 4096/],
  ];
  for (const [name, bytes, message] of cases) {
    t.test(name, async (t) => assertOptionInvalid(t, () => decodeInfoRequest(bytes), message));
  }
});

// ---- LIST/SET_META_CONTEXT data --------------------------------------------------------------

testParseGenerate(
  'meta context request: one query',
  { exportName: '', queries: ['base:allocation'] },
  hex`00000000                       # name length 0
      00000001                       # 1 query
      0000000f                       # query length 15
      626173653a616c6c6f636174696f6e # "base:allocation"`,
  decodeMetaContextRequest,
  (o) => encodeMetaContextRequest(o.exportName, o.queries),
);

testParseGenerate(
  'meta context request: named export, two queries',
  { exportName: 'golden', queries: ['base:', 'qemu:'] },
  hex`00000006 676f6c64656e # "golden"
      00000002              # 2 queries
      00000005 626173653a   # "base:"
      00000005 71656d753a   # "qemu:"`,
  decodeMetaContextRequest,
  (o) => encodeMetaContextRequest(o.exportName, o.queries),
);

testParseGenerate(
  'meta context request: zero queries',
  { exportName: 'x', queries: [] },
  hex`00000001 78 00000000`,
  decodeMetaContextRequest,
  (o) => encodeMetaContextRequest(o.exportName, o.queries),
);

t.test('malformed meta context requests are NBD_REP_ERR_INVALID', async (t) => {
  const cases: [string, Buffer, RegExp][] = [
    ['empty', hex``, /too short for export name length/],
    ['name longer than its data', hex`00000004 6162`, /too short for export name/],
    ['missing query count', hex`00000000 0000`, /too short for query count/],
    ['count larger than the list', hex`00000000 00000002 00000001 61`, /too short for query length/],
    ['query longer than its data', hex`00000000 00000001 00000009 626173653a`, /too short for query/],
    ['trailing bytes', hex`00000000 00000000 00`, /longer than its fields/],
    ['NUL in the export name', hex`00000001 00 00000000`, /NUL/],
    ['NUL in a query', hex`00000000 00000001 00000006 626173653a00`, /NUL/],
    ['4097-byte query', Buffer.concat([hex`00000000 00000001 00001001`, Buffer.alloc(4097, 0x61)]), /query is longer than 4096/],
    ['query count 0xffffffff with no queries', hex`00000000 ffffffff`, /too short for query length/],
  ];
  for (const [name, bytes, message] of cases) {
    t.test(name, async (t) => assertOptionInvalid(t, () => decodeMetaContextRequest(bytes), message));
  }
});
