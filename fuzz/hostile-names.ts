// Export names a hostile client might send in EXPORT_NAME, GO, INFO and the meta-context options:
// NULs, very long names, `EXPORT@NAME` variants (README "Named overlays": 1–64 of
// `A-Z a-z 0-9 . _ -`, not starting with `.`), path tricks and bytes that are not UTF-8.

import type { Rng } from './prng.js';

/** Valid overlay names come from this short list, so the run leaves a bounded number of named overlays. */
const VALID_OVERLAY_NAMES = ['fuzz', 'a', 'Z.9_-', 'x'.repeat(64)];

/** Fixed cases, each a known edge of the name rules. */
function fixedNames(exportName: string): string[] {
  const e = exportName;
  return [
    e,
    '',
    `${e}\0`,
    `\0${e}`,
    `${e.slice(0, 3)}\0${e.slice(3)}`,
    `${e}@`,
    `@${e}`,
    '@',
    '@@',
    `${e}@fuzz@fuzz`,
    `${e}@.fuzz`,
    `${e}@..`,
    `${e}@../../etc/passwd`,
    `${e}@a/b`,
    `${e}@fu\0zz`,
    `${e}@fuzz\0`,
    `${e}@${'x'.repeat(65)}`,
    `${e}@ fuzz`,
    `${e}@fuzz\n`,
    `${e}%40fuzz`,
    `${e}@fü`,
    `${e.toUpperCase()}`,
    `${e} `,
    `/${e}`,
    `${e}/`,
    `${e}@${'é'.repeat(40)}`,
    `nosuch@fuzz`,
    `${e}@${e}@${e}`,
  ];
}

/** One hostile name, as raw bytes. */
export function hostileName(rng: Rng, exportName: string): { name: Buffer; kind: string } {
  switch (rng.int(6)) {
    case 0:
      return { name: Buffer.from(rng.pick(fixedNames(exportName)), 'utf8'), kind: 'fixed' };
    case 1:
      return { name: Buffer.from(`${exportName}@${rng.pick(VALID_OVERLAY_NAMES)}`, 'utf8'), kind: 'named-overlay' };
    case 2: {
      // Long: up to the 64 KiB option limit and past it (the server must close, not buffer it all).
      const length = rng.pick([255, 256, 1024, 4096, 65_535 - 20, 65_536, 70_000]);
      const fill = rng.pick(['a', '@', '\0', 'é']);
      return { name: Buffer.from(`${exportName}@`.concat(fill.repeat(length)), 'utf8').subarray(0, length), kind: 'long' };
    }
    case 3: {
      // Not UTF-8: lone continuation bytes, overlong encodings, a surrogate half.
      const junk = rng.pick([[0xff], [0xc0, 0x80], [0xed, 0xa0, 0x80], [0x80], [0xfe, 0xff]]);
      return { name: Buffer.concat([Buffer.from(`${exportName}@`), Buffer.from(junk)]), kind: 'not-utf8' };
    }
    case 4:
      return { name: rng.bytes(rng.between(1, 80)), kind: 'random-bytes' };
    default: {
      // The export name with one byte changed, inserted or removed.
      const name = Buffer.from(exportName, 'utf8');
      const at = rng.int(name.length + 1);
      const edit = rng.int(3);
      if (edit === 0 && at < name.length) name[at] = rng.int(256);
      if (edit === 1)
        return { name: Buffer.concat([name.subarray(0, at), Buffer.of(rng.int(256)), name.subarray(at)]), kind: 'near' };
      if (edit === 2) return { name: Buffer.concat([name.subarray(0, at), name.subarray(at + 1)]), kind: 'near' };
      return { name, kind: 'near' };
    }
  }
}

/** A meta-context query a hostile client might send (the server knows `base:allocation` and `qemu:allocation-depth`). */
export function hostileQuery(rng: Rng): Buffer {
  const queries = [
    'base:allocation',
    'qemu:allocation-depth',
    'base:',
    'qemu:',
    'base:allocation\0',
    'qemu:dirty-bitmap:',
    ':',
    '',
    'x'.repeat(4096),
    'base:allocation'.repeat(100),
  ];
  return rng.chance(0.8) ? Buffer.from(rng.pick(queries), 'utf8') : rng.bytes(rng.between(0, 40));
}
