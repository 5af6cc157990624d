// `nbd-cow overlay check FILE --base BASE [--repair]`: verify an overlay file and say what was
// found in plain words. Checks, in order: the header (magic, version, checksum, flags, layout),
// the base binding (size and fingerprint against BASE), the file length against the layout, the
// map (no state 3, no bits past the last block, no "data" block beyond the end of the file),
// the lock (a live server using it) and the dirty flag.
//
// A crash (kill -9, power loss after fdatasync) only ever leaves the dirty flag set: the map on
// disk is the last flushed one, written after the data it points at was durable, so it is
// consistent. --repair then verifies everything above and clears the flag (fdatasync). It also
// cuts bytes stored past the end of the data region, which nothing ever reads. Anything else is
// corruption, which --repair refuses to paper over: turning a bad map state into some valid one
// would serve wrong data silently.
//
// Exit codes, as fsck: 0 clean, 1 repaired, 2 not closed cleanly (or in use) and not repaired,
// 4 corrupt or made for another base (said as WRONG BASE, not CORRUPT: the file is sound), 8 could
// not check (missing file, unreadable base).

import type { BaseImage } from './base-image.js';
import { BLOCK_DATA, BLOCK_ZERO } from './bitmap.js';
import { codedError } from './coded-error.js';
import { DataFile } from './data-file.js';
import { openImageStack } from './layer-stack.js';
import { readOverlayHeader, readOverlayMap } from './overlay-file.js';
import { encodeOverlayHeader, OVERLAY_HEADER_LENGTH } from './overlay-header.js';
import { checkBaseBinding } from './overlay-layout.js';
import { lockHolder } from './overlay-lock.js';
import { O_RDONLY, O_RDWR } from './syscalls.js';

export type CheckStatus = 'clean' | 'repaired' | 'not-clean' | 'corrupt' | 'error';

export interface CheckReport {
  readonly status: CheckStatus;
  readonly exitCode: number;
  /** What was found, one finding per line. */
  readonly lines: readonly string[];
}

export interface CheckOptions {
  readonly base: string;
  /** Opens the base (default: the local file; lib/remote/open-base-image.ts opens a URL too). */
  readonly openBase?: (path: string) => Promise<BaseImage>;
  /** Frozen overlays on the base, bottom first: the overlay belongs on the last. */
  readonly layers?: readonly string[];
  readonly repair?: boolean;
}

const EXIT: Readonly<Record<CheckStatus, number>> = { clean: 0, repaired: 1, 'not-clean': 2, corrupt: 4, error: 8 };

function report(status: CheckStatus, lines: string[]): CheckReport {
  return { status, exitCode: EXIT[status], lines };
}

function mib(bytes: number): string {
  return `${(bytes / (1024 * 1024)).toFixed(1)} MiB`;
}

export async function checkOverlay(path: string, options: CheckOptions): Promise<CheckReport> {
  const lines: string[] = [];
  let base: BaseImage;
  try {
    base = await openImageStack(options.base, options.layers ?? [], options.openBase);
  } catch (err) {
    return report('error', [`cannot check: ${(err as Error).message}`]);
  }
  const identity = base.identity;
  await base.close();
  const repair = options.repair ?? false;
  const holder = await lockHolder(`${path}.lock`);
  if (holder?.alive === true && repair) {
    return report('not-clean', [`${path} is in use by process ${holder.pid}: stop that server before --repair`]);
  }
  let file: DataFile;
  try {
    file = await DataFile.open(path, repair ? O_RDWR : O_RDONLY);
  } catch (err) {
    return report('error', [`cannot check: cannot open overlay ${path}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`]);
  }
  try {
    return await checkOpen(path, file, identity, repair, holder?.alive === true ? holder.pid : undefined, lines);
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (err instanceof OtherBase) return report('corrupt', [...lines, `WRONG BASE: ${err.message}${otherBaseHint(options)}`]);
    if (code === 'EINVAL') return report('corrupt', [...lines, `CORRUPT: ${(err as Error).message}`]);
    return report('error', [...lines, `cannot check: ${(err as Error).message}`]);
  } finally {
    await file.close();
  }
}

/** The overlay is sound but bound to another base (or layer) than the one given: not corruption. */
class OtherBase extends Error {}

/** What to try when the binding does not match: the layers the overlay may have been made on. */
function otherBaseHint(options: CheckOptions): string {
  return (options.layers ?? []).length === 0
    ? ' (an overlay made on frozen layers is checked with them: --layer LAYER for each, bottom first)'
    : ' (the layers are given bottom first, each frozen on the one before it)';
}

async function checkOpen(
  path: string,
  file: DataFile,
  identity: { size: number; fingerprint: string },
  repair: boolean,
  inUseBy: number | undefined,
  lines: string[],
): Promise<CheckReport> {
  const { size: fileLength } = await file.stat();
  if (fileLength < OVERLAY_HEADER_LENGTH) {
    throw codedError('EINVAL', `file is ${fileLength} bytes, too short for an overlay header`);
  }
  const { header, geometry: g } = await readOverlayHeader(file);
  lines.push(`header: ok (version 1, block size ${g.blockSize}, virtual size ${g.size} bytes = ${g.blocks} blocks, checksum ok)`);
  try {
    checkBaseBinding(path, header, identity);
  } catch (err) {
    throw new OtherBase((err as Error).message);
  }
  if (header.virtualSize !== identity.size) {
    throw codedError('EINVAL', `virtual size ${header.virtualSize} differs from the base size ${identity.size}`);
  }
  lines.push(`base: ok (size ${identity.size}, fingerprint ${identity.fingerprint.slice(0, 16)}…)`);
  if (fileLength < g.dataOffset) {
    throw codedError('EINVAL', `file is ${fileLength} bytes, shorter than its header and map (${g.dataOffset})`);
  }
  const map = await readOverlayMap(file, g);
  let data = 0;
  let zero = 0;
  let lastData = -1;
  for (let b = 0; b < g.blocks; ) {
    const run = map.runOf(b, g.blocks - b);
    const state = map.get(b);
    if (state === BLOCK_DATA) {
      data += run;
      lastData = b + run - 1;
    } else if (state === BLOCK_ZERO) zero += run;
    b += run;
  }
  const storedEnd = lastData < 0 ? 0 : g.dataOffset + Math.min((lastData + 1) * g.blockSize, g.size);
  if (storedEnd > fileLength) {
    const message = `map says block ${lastData} holds data, but the file ends at ${fileLength} bytes before it (${storedEnd})`;
    throw codedError('EINVAL', message);
  }
  lines.push(
    `map: ok (${data} blocks in the overlay = ${mib(data * g.blockSize)}, ${zero} zeroed, ${g.blocks - data - zero} from the base)`,
  );
  const limit = g.dataOffset + g.size;
  const excess = fileLength > limit;
  if (excess) lines.push(`file: ${fileLength - limit} bytes stored past the end of the data region (never read)`);
  if (inUseBy !== undefined) {
    lines.push(`in use by process ${inUseBy}: the dirty flag is expected while a server has it open`);
    return report('not-clean', lines);
  }
  if (!header.dirty && !excess) {
    lines.push(header.frozen === true ? 'state: clean, frozen (a layer: read-only for good)' : 'state: clean (closed cleanly)');
    return report('clean', lines);
  }
  if (header.dirty) {
    lines.push(
      'state: not closed cleanly (the server was killed or crashed); the map is the last flushed one and is ' +
        'consistent: every flushed write is there, writes never flushed may be missing',
    );
  }
  if (!repair) {
    lines.push('run with --repair to mark it clean');
    return report('not-clean', lines);
  }
  if (excess) await file.truncate(limit);
  if (header.dirty) await file.write(encodeOverlayHeader({ ...header, dirty: false }), 0);
  await file.sync();
  lines.push(
    `repaired: ${[excess ? 'cut the bytes past the data region' : '', header.dirty ? 'cleared the dirty flag' : ''].filter(Boolean).join(', ')}`,
  );
  return report('repaired', lines);
}
