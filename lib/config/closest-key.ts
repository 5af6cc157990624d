// The known key an unknown one was probably meant to be, for "did you mean" hints: the same key
// in another spelling (`block_size`, `blockSize`, `Block-Size` for `block-size`), else the one
// within two edits (`overlay-dirs`, `blok-size`). No guess when two are equally close.

/** Edits allowed between a typo and its key; more and the hint would be a guess. */
const MAX_EDITS = 2;

/** The key in `known` that `key` most likely meant, or undefined. */
export function closestKey(key: string, known: readonly string[]): string | undefined {
  const spelled = kebabCase(key);
  const sameWords = known.find((candidate) => candidate === spelled);
  if (sameWords !== undefined) return sameWords;
  let best: string | undefined;
  let bestDistance = MAX_EDITS + 1;
  let tie = false;
  for (const candidate of known) {
    const distance = editDistance(spelled, candidate);
    if (distance < bestDistance) {
      best = candidate;
      bestDistance = distance;
      tie = false;
    } else if (distance === bestDistance) {
      tie = true;
    }
  }
  return tie ? undefined : best;
}

/** `blockSize`, `block_size`, `BLOCK SIZE` → `block-size`. */
function kebabCase(key: string): string {
  return key
    .replace(/([a-z0-9])([A-Z])/g, '$1-$2')
    .replace(/[_\s]+/g, '-')
    .toLowerCase();
}

/** Levenshtein distance: insertions, deletions and substitutions, one row at a time. */
export function editDistance(a: string, b: string): number {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const row = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitution = (previous[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1);
      row.push(Math.min((previous[j] ?? 0) + 1, (row[j - 1] ?? 0) + 1, substitution));
    }
    previous = row;
  }
  return previous[b.length] ?? 0;
}
