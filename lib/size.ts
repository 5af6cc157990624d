// Byte sizes as an operator writes them on the command line: `4096`, `64K`, `10G` (suffixes
// K, M, G, T in either case, powers of 1024). Strict: anything else is refused with a message
// saying what was expected, so a typo never becomes a surprising limit.

const UNITS: Readonly<Record<string, number>> = { '': 1, k: 1024, m: 1024 ** 2, g: 1024 ** 3, t: 1024 ** 4 };

/** At most 16 digits: every value stays a safe integer before the unit multiplies it. */
const SIZE_PATTERN = /^(\d{1,16})([kKmMgGtT]?)$/;

/** The number of bytes `text` stands for; a RangeError says why a text is not a size. */
export function parseByteSize(text: string): number {
  const match = SIZE_PATTERN.exec(text);
  const unit = UNITS[(match?.[2] ?? '').toLowerCase()];
  if (match === null || unit === undefined) {
    throw new RangeError('expected a size in bytes such as 4096, 64K, 512M or 10G (K, M, G, T: powers of 1024)');
  }
  const bytes = Number(match[1]) * unit;
  if (!Number.isSafeInteger(bytes)) throw new RangeError(`${text} is too large (at most ${Number.MAX_SAFE_INTEGER} bytes)`);
  return bytes;
}
