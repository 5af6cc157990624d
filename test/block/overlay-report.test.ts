// What `overlay info` and `overlay map` print: sizes as qemu-img writes them, aligned key: value
// lines, the map as a table and as `qemu-img map --output=json` entries (depth 0 = overlay,
// 1 = base; zero extents have no offset), and the commit summary line.

import t from 'tap';
import type { OverlayExtent, OverlayInfo } from '../../lib/block/overlay-inspect.js';
import { formatCommitSummary, formatInfo, formatMap, humanSize, infoJson, mapJson } from '../../lib/block/overlay-report.js';

t.test('humanSize: three significant digits, the unit changing at 1000 of the one below', async (t) => {
  const cases: Array<[number, string]> = [
    [0, '0 B'],
    [1, '1 B'],
    [999, '999 B'],
    [1000, '0.977 KiB'],
    [1024, '1 KiB'],
    [1536, '1.5 KiB'],
    [65536, '64 KiB'],
    [1048576, '1 MiB'],
    [8310784, '7.93 MiB'],
    [1073741824, '1 GiB'],
    [107374182, '102 MiB'],
    [2 ** 50, '1 PiB'],
    [2 ** 62, '4 EiB'],
  ];
  for (const [bytes, text] of cases) t.equal(humanSize(bytes), text, `${bytes}`);
});

const INFO: OverlayInfo = {
  path: '/srv/ov/named-golden@alice.cow',
  formatVersion: 1,
  blockSize: 4096,
  virtualSize: 8388608,
  blocks: 2048,
  base: { size: 8388608, fingerprint: 'ab'.repeat(32) },
  data: { blocks: 3, bytes: 12288 },
  zero: { blocks: 16, bytes: 65536 },
  fromBase: { blocks: 2029, bytes: 8310784 },
  fileLength: 8400896,
  allocatedBytes: 24576,
  dirty: false,
  layer: undefined,
  inUseBy: undefined,
};

t.test('info as text: aligned key: value lines', async (t) => {
  t.equal(
    formatInfo(INFO),
    [
      'image:            /srv/ov/named-golden@alice.cow',
      'file format:      nbd-cow overlay, version 1',
      'virtual size:     8 MiB (8388608 bytes)',
      'block size:       4096',
      'blocks:           2048',
      'base size:        8 MiB (8388608 bytes)',
      `base fingerprint: ${'ab'.repeat(32)}`,
      'data:             3 blocks, 12 KiB (12288 bytes)',
      'zero:             16 blocks, 64 KiB (65536 bytes)',
      'from base:        2029 blocks, 7.93 MiB (8310784 bytes)',
      'file length:      8.01 MiB (8400896 bytes)',
      'disk size:        24 KiB (24576 bytes)',
      'state:            clean (closed cleanly)',
      'frozen:           no',
      'in use:           no',
      '',
    ].join('\n'),
  );
  const layer = { size: 8388608, fingerprint: 'cd'.repeat(32) };
  t.match(
    formatInfo({ ...INFO, layer }),
    new RegExp(
      `^frozen: {11}yes: a layer \\(--layer\\); overlays on it record base size 8388608, fingerprint ${'cd'.repeat(32)}$`,
      'm',
    ),
  );
  const busy = formatInfo({ ...INFO, dirty: true, inUseBy: 4242 });
  t.match(busy, /^state: {12}dirty \(not closed cleanly, or a server has it open\)/m);
  t.match(busy, /^in use: {11}yes, by process 4242 /m);
});

t.test('info as JSON', async (t) => {
  t.same(JSON.parse(infoJson(INFO)), {
    filename: '/srv/ov/named-golden@alice.cow',
    format: 'nbd-cow-overlay',
    'format-version': 1,
    'block-size': 4096,
    'virtual-size': 8388608,
    'base-size': 8388608,
    'base-fingerprint': 'ab'.repeat(32),
    blocks: { total: 2048, data: 3, zero: 16, base: 2029 },
    bytes: { data: 12288, zero: 65536, base: 8310784 },
    'file-length': 8400896,
    'actual-size': 24576,
    dirty: false,
    frozen: false,
    'in-use': false,
  });
  t.match(JSON.parse(infoJson({ ...INFO, layer: { size: 1, fingerprint: 'cd'.repeat(32) } })), {
    frozen: true,
    'layer-fingerprint': 'cd'.repeat(32),
  });
  t.match(JSON.parse(infoJson({ ...INFO, inUseBy: 7 })), { 'in-use': true, 'in-use-by': 7 });
  t.match(infoJson(INFO), /^\{\n {4}"filename"/, 'indented as qemu-img info --output=json');
});

const EXTENTS: OverlayExtent[] = [
  { start: 0, length: 4096, state: 'base', fileOffset: undefined },
  { start: 4096, length: 65536, state: 'data', fileOffset: 77824 },
  { start: 69632, length: 1048576, state: 'zero', fileOffset: undefined },
  { start: 1118208, length: 1000, state: 'base', fileOffset: undefined },
];

t.test('map as a table, offsets in hex as qemu-img map prints them', async (t) => {
  t.equal(
    formatMap(EXTENTS),
    [
      'start           length          state  offset',
      '0               0x1000          base',
      '0x1000          0x10000         data   0x13000',
      '0x11000         0x100000        zero',
      '0x111000        0x3e8           base',
      '',
    ].join('\n'),
  );
});

t.test('map as qemu-img map --output=json', async (t) => {
  const text = mapJson(EXTENTS);
  t.equal(
    text,
    [
      '[{ "start": 0, "length": 4096, "depth": 1, "present": true, "zero": false, "data": true, "offset": 0},',
      '{ "start": 4096, "length": 65536, "depth": 0, "present": true, "zero": false, "data": true, "offset": 77824},',
      '{ "start": 69632, "length": 1048576, "depth": 0, "present": true, "zero": true, "data": false},',
      '{ "start": 1118208, "length": 1000, "depth": 1, "present": true, "zero": false, "data": true, "offset": 1118208}]',
      '',
    ].join('\n'),
  );
  t.equal((JSON.parse(text) as unknown[]).length, 4, 'valid JSON');
  t.equal(mapJson([]), '[]\n');
});

t.test('commit summary', async (t) => {
  t.equal(
    formatCommitSummary({
      output: 'new.img',
      size: 1073741824,
      writtenBytes: 966367641,
      allocatedBytes: 966369280,
      overridden: [],
      verified: true,
      flushed: true,
    }),
    'new.img: 1 GiB (1073741824 bytes), 922 MiB written, 102 MiB left as holes (disk size 922 MiB); verified, flushed\n',
  );
  t.match(
    formatCommitSummary({
      output: 'n',
      size: 4096,
      writtenBytes: 0,
      allocatedBytes: 0,
      overridden: [],
      verified: false,
      flushed: false,
    }),
    /; not verified, not flushed\n$/,
  );
});
