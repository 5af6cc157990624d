// What `overlay info` and `overlay map` print, as pure functions of what overlay-inspect.ts
// read: text for people, laid out as `qemu-img info` and `qemu-img map` lay theirs out, and
// JSON for scripts. `map --json` has the shape of `qemu-img map --output=json`, so the tools
// that read that read this:
//
//   state  depth  present  zero   data   offset
//   data   0      true     false  true   where the bytes are in the overlay file
//   zero   0      true     true   false  (none)
//   base   1      true     false  true   the same offset in the (raw) base image
//
// Depth 0 is the overlay and depth 1 its base, as qemu numbers a qcow2 overlay (0) and its raw
// backing file (1). The base is not read: a run of zeros in it shows as data, as the server's
// base:allocation shows it.

import type { CommitResult } from './overlay-commit.js';
import type { OverlayExtent, OverlayInfo } from './overlay-inspect.js';

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'];

/**
 * `bytes` as qemu's size_to_str() writes it: three significant digits, the unit changing at
 * 1000 of the one below ("1000 KiB" is "0.977 MiB"). 0 is "0 B".
 */
export function humanSize(bytes: number): string {
  if (bytes <= 0) return '0 B';
  const unit = Math.min(UNITS.length - 1, Math.max(0, Math.floor(Math.log2(bytes * 1.024) / 10)));
  const value = Number((bytes / 1024 ** unit).toPrecision(3));
  return `${value} ${UNITS[unit]}`;
}

function sizeLine(bytes: number): string {
  return `${humanSize(bytes)} (${bytes} bytes)`;
}

function countLine(c: { blocks: number; bytes: number }): string {
  return `${c.blocks} blocks, ${sizeLine(c.bytes)}`;
}

/** `key: value` lines with the values in one column. */
function aligned(rows: ReadonlyArray<readonly [string, string]>): string {
  const width = Math.max(...rows.map(([key]) => key.length)) + 2;
  return rows.map(([key, value]) => `${`${key}:`.padEnd(width)}${value}\n`).join('');
}

/** `overlay info` as text. */
export function formatInfo(info: OverlayInfo): string {
  const state = info.dirty
    ? 'dirty (not closed cleanly, or a server has it open): the map is the last flushed one'
    : 'clean (closed cleanly)';
  const inUse =
    info.inUseBy === undefined ? 'no' : `yes, by process ${info.inUseBy} (a server has it open; the map is its last flushed one)`;
  return aligned([
    ['image', info.path],
    ['file format', `nbd-cow overlay, version ${info.formatVersion}`],
    ['virtual size', sizeLine(info.virtualSize)],
    ['block size', String(info.blockSize)],
    ['blocks', String(info.blocks)],
    ['base size', sizeLine(info.base.size)],
    ['base fingerprint', info.base.fingerprint],
    ['data', countLine(info.data)],
    ['zero', countLine(info.zero)],
    ['from base', countLine(info.fromBase)],
    ['file length', sizeLine(info.fileLength)],
    ['disk size', sizeLine(info.allocatedBytes)],
    ['state', state],
    [
      'frozen',
      info.layer === undefined
        ? 'no'
        : `yes: a layer (--layer); overlays on it record base size ${info.layer.size}, fingerprint ${info.layer.fingerprint}`,
    ],
    ['in use', inUse],
  ]);
}

/** `overlay info --json`: the same fields, named as qemu-img info names its own where it has them. */
export function infoJson(info: OverlayInfo): string {
  const json = {
    filename: info.path,
    format: 'nbd-cow-overlay',
    'format-version': info.formatVersion,
    'block-size': info.blockSize,
    'virtual-size': info.virtualSize,
    'base-size': info.base.size,
    'base-fingerprint': info.base.fingerprint,
    blocks: { total: info.blocks, data: info.data.blocks, zero: info.zero.blocks, base: info.fromBase.blocks },
    bytes: { data: info.data.bytes, zero: info.zero.bytes, base: info.fromBase.bytes },
    'file-length': info.fileLength,
    'actual-size': info.allocatedBytes,
    dirty: info.dirty,
    frozen: info.layer !== undefined,
    ...(info.layer !== undefined ? { 'layer-fingerprint': info.layer.fingerprint } : {}),
    'in-use': info.inUseBy !== undefined,
    ...(info.inUseBy !== undefined ? { 'in-use-by': info.inUseBy } : {}),
  };
  return `${JSON.stringify(json, null, 4)}\n`;
}

/** A number as C's printf("%#x") writes it: 0x-prefixed hex, plain "0" for zero. */
function hex(n: number): string {
  return n === 0 ? '0' : `0x${n.toString(16)}`;
}

/** `overlay map` as text: one row per extent, offsets in hex as `qemu-img map` prints them. */
export function formatMap(extents: readonly OverlayExtent[]): string {
  const rows = extents.map((e) => [hex(e.start), hex(e.length), e.state, e.fileOffset === undefined ? '' : hex(e.fileOffset)]);
  const lines = [['start', 'length', 'state', 'offset'], ...rows].map(([start = '', length = '', state = '', offset = '']) =>
    `${start.padEnd(16)}${length.padEnd(16)}${state.padEnd(7)}${offset}`.trimEnd(),
  );
  return `${lines.join('\n')}\n`;
}

/** One extent as a `qemu-img map --output=json` entry (see the table at the top). */
function mapEntry(e: OverlayExtent): string {
  const depth = e.state === 'base' ? 1 : 0;
  const zero = e.state === 'zero';
  const offset = e.state === 'data' ? e.fileOffset : e.state === 'base' ? e.start : undefined;
  const tail = offset === undefined ? '' : `, "offset": ${offset}`;
  const flags = `"depth": ${depth}, "present": true, "zero": ${zero}, "data": ${!zero}`;
  return `{ "start": ${e.start}, "length": ${e.length}, ${flags}${tail}}`;
}

/** `overlay map --json`, laid out as qemu-img lays it out: one entry a line. */
export function mapJson(extents: readonly OverlayExtent[]): string {
  return `[${extents.map(mapEntry).join(',\n')}]\n`;
}

/** The line `overlay commit` prints once NEW is in place. */
export function formatCommitSummary(r: CommitResult): string {
  const holes = r.size - r.writtenBytes;
  return (
    `${r.output}: ${sizeLine(r.size)}, ${humanSize(r.writtenBytes)} written, ${humanSize(holes)} left as holes ` +
    `(disk size ${humanSize(r.allocatedBytes)}); ${r.verified ? 'verified' : 'not verified'}, ${r.flushed ? 'flushed' : 'not flushed'}\n`
  );
}
