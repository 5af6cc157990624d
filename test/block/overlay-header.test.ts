import { crc32 } from 'node:zlib';
import t from 'tap';
import { decodeOverlayHeader, encodeOverlayHeader, type OverlayHeader } from '../../lib/block/overlay-header.js';
import { hex } from '../helpers/hex.js';

// A 10 GiB + 1000 byte image in 64 KiB blocks: 163841 blocks, 40961 map bytes -> 11 pages.
const fixture = hex`
  4e4244434f574f56                   # magic "NBDCOWOV"
  00000001                           # version 1
  00000080                           # header length 128
  00010000                           # block size 65536
  00000001                           # flags: dirty
  00000002800003e8                   # virtual size 10737419240
  00000002800003e8                   # base size 10737419240
  000102030405060708090a0b0c0d0e0f   # base fingerprint (32 bytes)
  101112131415161718191a1b1c1d1e1f
  0000000000001000                   # map offset 4096
  000000000000b000                   # map length 45056
  0000000000010000                   # data offset 65536
  00000000000000000000000000000000   # reserved (28 bytes)
  000000000000000000000000
  661a55d7                           # crc32 of bytes 0..123
`;

const header: OverlayHeader = {
  blockSize: 65536,
  virtualSize: 10737419240,
  baseSize: 10737419240,
  baseFingerprint: '000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f',
  dirty: true,
  mapOffset: 4096,
  mapLength: 45056,
  dataOffset: 65536,
};

t.test('encode matches the fixture byte for byte', async (t) => {
  t.equal(fixture.length, 128);
  t.equal(crc32(fixture.subarray(0, 124)), fixture.readUInt32BE(124), 'the fixture checksum is right');
  t.same(encodeOverlayHeader(header), fixture);
});

t.test('decode the fixture', async (t) => {
  t.strictSame(decodeOverlayHeader(fixture), { ...header, frozen: false });
  const padded = Buffer.concat([Buffer.alloc(3), fixture]);
  t.strictSame(decodeOverlayHeader(padded, 3), { ...header, frozen: false }, 'at an offset');
});

t.test('round trip, clean flag', async (t) => {
  const clean = { ...header, dirty: false, virtualSize: 1, baseSize: 1, mapLength: 4096, dataOffset: 65536 };
  const buf = encodeOverlayHeader(clean);
  t.equal(buf.readUInt32BE(20), 0, 'flags 0');
  t.strictSame(decodeOverlayHeader(buf), { ...clean, frozen: false });
});

t.test('frozen: flag bit 1 and the layer id at 96, both in the checksum', async (t) => {
  const layerId = '0123456789abcdef'.repeat(2);
  const frozen = { ...header, dirty: false, frozen: true, layerId };
  const buf = encodeOverlayHeader(frozen);
  t.equal(buf.readUInt32BE(20), 2, 'flags: frozen');
  t.equal(buf.subarray(96, 112).toString('hex'), layerId, 'layer id at 96');
  t.ok(buf.subarray(112, 124).equals(Buffer.alloc(12)), 'the rest reserved, zero');
  t.strictSame(decodeOverlayHeader(buf), frozen);
  const { layerId: _, ...noLayerId } = frozen;
  t.throws(() => encodeOverlayHeader(noLayerId), RangeError, 'frozen needs an id');
  t.throws(() => encodeOverlayHeader({ ...frozen, layerId: '0'.repeat(32) }), RangeError, 'not all zero');
  t.throws(() => encodeOverlayHeader({ ...frozen, layerId: 'xyz' }), RangeError, '32 hex digits');
  const notFrozen = encodeOverlayHeader({ ...header, layerId });
  t.ok(notFrozen.subarray(96, 112).equals(Buffer.alloc(16)), 'an id is written only when frozen');
  const both = Buffer.from(buf);
  both.writeUInt32BE(3, 20);
  both.writeUInt32BE(crc32(both.subarray(0, 124)), 124);
  t.throws(() => decodeOverlayHeader(both), { message: /both frozen and dirty/, code: 'EINVAL' });
  const noId = Buffer.from(buf);
  noId.fill(0, 96, 112);
  noId.writeUInt32BE(crc32(noId.subarray(0, 124)), 124);
  t.throws(() => decodeOverlayHeader(noId), { message: /frozen without a layer id/ });
});

function corrupt(at: number, value: number, fixCrc: boolean): Buffer {
  const buf = Buffer.from(fixture);
  buf[at] = value;
  if (fixCrc) buf.writeUInt32BE(crc32(buf.subarray(0, 124)), 124);
  return buf;
}

t.test('bad headers are refused with a clear message', async (t) => {
  t.throws(() => decodeOverlayHeader(corrupt(0, 0x58, true)), { message: /bad magic 0x58424443/, code: 'EINVAL' });
  t.throws(() => decodeOverlayHeader(corrupt(11, 2, true)), { message: /unsupported version 2/ });
  t.throws(() => decodeOverlayHeader(corrupt(30, 0xff, false)), { message: /checksum mismatch/ });
  t.throws(() => decodeOverlayHeader(corrupt(125, 0, false)), { message: /checksum mismatch/ });
  t.throws(() => decodeOverlayHeader(corrupt(23, 5, true)), { message: /unknown flags 0x5/ });
  t.throws(() => decodeOverlayHeader(corrupt(15, 0x40, true)), { message: /bad header length 64/ });
  t.throws(() => decodeOverlayHeader(corrupt(24, 0xff, true)), { message: /virtual size .* too large/ });
  t.throws(() => decodeOverlayHeader(fixture.subarray(0, 100)), { message: /truncated/ });
  t.throws(() => encodeOverlayHeader({ ...header, baseFingerprint: 'abc' }), RangeError);
});
