// What `overlay stats` prints, as pure functions of what overlay-stats.ts counted: text for
// people (`key: value` lines, one block per group, sizes as `overlay info` writes them), one
// JSON object for scripts, the warning line for a skipped file, and the definitions --help
// shows, which are the ones the counting follows.

import { humanSize } from './overlay-report.js';
import type { ByteCount, OverlayStats, StatsGroup } from './overlay-stats.js';

/** The definitions behind the numbers, for `overlay stats --help`. */
export const STATS_DEFINITIONS = `
Overlays are grouped by base (size and fingerprint) and block size; blocks are compared only
within a group, by content (sha256, 125 bits kept), wherever they are in which overlay. Each
overlay's last flushed map is read (an overlay in use is read as it was at its last flush).

  data          blocks in the data state, and their bytes
  all zeros     data blocks whose bytes are all zero: they could be in the zero state
  same as base  (--base) non-zero data blocks equal to the base at the same offset: they
                could go back to the base state
  distinct      distinct contents among the non-zero data blocks
  duplicates    non-zero data blocks whose content is in another data block too, in this
                overlay or another (every copy counts, the first one too)
  stored        what a shared content-addressed block store would keep: each distinct content
                once, and nothing for all-zero and same-as-base blocks
  saved         data bytes - stored bytes
                = all-zero bytes + same-as-base bytes + the extra copies of repeated contents,
                as a share of the data bytes (the store's own index is not counted)
  disk size     the bytes the overlay files take on disk (st_blocks x 512)
`;

/** The line written on stderr for a file skipped by the scan. */
export function skipWarning(reason: string): string {
  return `nbd-cow: warning: skipping: ${reason}\n`;
}

/** `part` as a percentage of `whole`, one decimal; 0 when `whole` is 0. */
export function percentOf(part: number, whole: number): number {
  return whole === 0 ? 0 : Math.round((part * 1000) / whole) / 10;
}

function sizeLine(bytes: number): string {
  return `${humanSize(bytes)} (${bytes} bytes)`;
}

function countLine(c: ByteCount): string {
  return `${c.blocks} blocks, ${sizeLine(c.bytes)}`;
}

/** `key: value` lines with the values in one column. */
function aligned(rows: ReadonlyArray<readonly [string, string]>): string {
  const width = Math.max(...rows.map(([key]) => key.length)) + 2;
  return rows.map(([key, value]) => `${`${key}:`.padEnd(width)}${value}\n`).join('');
}

/** Where the saved bytes come from: all zeros, same as base, repeated contents. */
function savedParts(g: StatsGroup): { zero: number; sameAsBase: number; duplicates: number } {
  const sameAsBase = g.sameAsBase?.bytes ?? 0;
  return { zero: g.zero.bytes, sameAsBase, duplicates: g.savedBytes - g.zero.bytes - sameAsBase };
}

function groupRows(g: StatsGroup, index: number, of: number): Array<[string, string]> {
  const parts = savedParts(g);
  const sources = [`${humanSize(parts.zero)} all zeros`];
  if (g.sameAsBase !== undefined) sources.push(`${humanSize(parts.sameAsBase)} same as base`);
  sources.push(`${humanSize(parts.duplicates)} repeated contents`);
  const rows: Array<[string, string]> = [
    [`group ${index + 1} of ${of}`, `base size ${g.base.size}, block size ${g.blockSize}`],
    ['base fingerprint', g.base.fingerprint],
    ['overlays', String(g.overlays.length)],
    ['disk size', sizeLine(g.allocatedBytes)],
    ['data', countLine(g.data)],
    ['all zeros', countLine(g.zero)],
  ];
  if (g.sameAsBase !== undefined) rows.push(['same as base', countLine(g.sameAsBase)]);
  rows.push(
    ['distinct', `${g.distinct} contents`],
    ['duplicates', countLine(g.duplicates)],
    ['stored', `${g.stored.contents} contents, ${sizeLine(g.stored.bytes)}`],
    ['saved', `${sizeLine(g.savedBytes)}, ${percentOf(g.savedBytes, g.data.bytes)}% of data: ${sources.join(', ')}`],
  );
  return rows;
}

function totals(stats: OverlayStats): { data: number; saved: number; allocated: number } {
  let data = 0;
  let saved = 0;
  let allocated = 0;
  for (const g of stats.groups) {
    data += g.data.bytes;
    saved += g.savedBytes;
    allocated += g.allocatedBytes;
  }
  return { data, saved, allocated };
}

/** `overlay stats` as text: the scan, then one block per group, then the total of several. */
export function formatStats(stats: OverlayStats): string {
  const head: Array<[string, string]> = [['directory', stats.directory]];
  if (stats.base !== undefined) {
    head.push(['base', `${stats.base.path} (size ${stats.base.identity.size}, fingerprint ${stats.base.identity.fingerprint})`]);
  }
  const read = [`${stats.scanned} read`, `${stats.skipped.length} skipped`];
  if (stats.base !== undefined) read.push(`${stats.otherBase.length} of other bases left out`);
  head.push(['overlays', read.join(', ')], ['groups', String(stats.groups.length)]);
  const blocks = [aligned(head)];
  stats.groups.forEach((g, i) => {
    blocks.push(aligned(groupRows(g, i, stats.groups.length)));
  });
  if (stats.groups.length > 1) {
    const t = totals(stats);
    blocks.push(
      aligned([
        ['total data', sizeLine(t.data)],
        ['total saved', `${sizeLine(t.saved)}, ${percentOf(t.saved, t.data)}% of data`],
        ['total disk size', sizeLine(t.allocated)],
      ]),
    );
  }
  return blocks.join('\n');
}

function countJson(c: ByteCount): { blocks: number; bytes: number } {
  return { blocks: c.blocks, bytes: c.bytes };
}

function groupJson(g: StatsGroup): Record<string, unknown> {
  const parts = savedParts(g);
  return {
    'base-size': g.base.size,
    'base-fingerprint': g.base.fingerprint,
    'block-size': g.blockSize,
    overlays: g.overlays,
    'actual-size': g.allocatedBytes,
    data: countJson(g.data),
    zero: countJson(g.zero),
    ...(g.sameAsBase !== undefined ? { 'same-as-base': countJson(g.sameAsBase) } : {}),
    distinct: g.distinct,
    duplicates: countJson(g.duplicates),
    stored: { contents: g.stored.contents, bytes: g.stored.bytes },
    saved: {
      bytes: g.savedBytes,
      percent: percentOf(g.savedBytes, g.data.bytes),
      zero: parts.zero,
      ...(g.sameAsBase !== undefined ? { 'same-as-base': parts.sameAsBase } : {}),
      duplicates: parts.duplicates,
    },
  };
}

/** `overlay stats --json`: one object; byte counts are exact, sizes as in `overlay info --json`. */
export function statsJson(stats: OverlayStats): string {
  const t = totals(stats);
  const json = {
    directory: stats.directory,
    ...(stats.base !== undefined
      ? { base: { filename: stats.base.path, size: stats.base.identity.size, fingerprint: stats.base.identity.fingerprint } }
      : {}),
    scanned: stats.scanned,
    skipped: stats.skipped.map((s) => ({ filename: s.path, reason: s.reason })),
    ...(stats.base !== undefined ? { 'other-base': stats.otherBase } : {}),
    groups: stats.groups.map(groupJson),
    total: {
      'data-bytes': t.data,
      'saved-bytes': t.saved,
      'saved-percent': percentOf(t.saved, t.data),
      'actual-size': t.allocated,
    },
  };
  return `${JSON.stringify(json, null, 4)}\n`;
}
