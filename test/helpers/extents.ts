// Block-status extents as the clients report them: neighbours merged, flags looked up by offset.

/** Extents as [length, flags] pairs, with neighbours of equal flags merged. */
export function coalesce(extents: readonly (readonly [number, number])[]): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const [length, flags] of extents) {
    const last = out[out.length - 1];
    if (last !== undefined && last[1] === flags) last[0] += length;
    else out.push([length, flags]);
  }
  return out;
}

/** The status flags at byte `offset` of an extent list that starts at `start`. */
export function flagsAt(extents: readonly (readonly [number, number])[], start: number, offset: number): number | undefined {
  let pos = start;
  for (const [length, flags] of extents) {
    if (offset >= pos && offset < pos + length) return flags;
    pos += length;
  }
  return undefined;
}

/** Bytes of the pattern base at [offset, offset + length), read from the file. */
export { fillPattern, patternByte } from '../../lib/demo-image.js';
