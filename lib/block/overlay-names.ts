// Names of named (kept) overlay files. A client selects one with the export name
// `EXPORT@NAME`; its file in the overlay directory is `named-<EXPORT>@<NAME>.cow`, next to its
// lock `named-<EXPORT>@<NAME>.cow.lock`. Both parts are restricted to [A-Za-z0-9._-], 1-64
// characters, not starting with '.', so a name can never climb out of the directory, hide as a
// dot file or collide with an ephemeral `eph-<pid>-<n>.cow` (which the start-up sweep removes;
// named files never match its pattern).

const PART = /^[A-Za-z0-9_-][A-Za-z0-9._-]{0,63}$/;

export const NAME_RULE = '1-64 characters from A-Z a-z 0-9 . _ -, not starting with "."';

/** Whether `part` may be an export or overlay name in a named overlay's file name. */
export function isValidNamePart(part: string): boolean {
  return PART.test(part);
}

/** `EXPORT@NAME` split at its last '@', or undefined when there is none. */
export function splitNamedExport(name: string): { exportName: string; overlayName: string } | undefined {
  const at = name.lastIndexOf('@');
  if (at < 0) return undefined;
  return { exportName: name.slice(0, at), overlayName: name.slice(at + 1) };
}

/** The file name of named overlay `overlayName` of export `exportName` (both validated). */
export function namedOverlayFileName(exportName: string, overlayName: string): string {
  for (const part of [exportName, overlayName]) {
    if (!isValidNamePart(part)) throw new RangeError(`invalid name part ${JSON.stringify(part)}: ${NAME_RULE}`);
  }
  return `named-${exportName}@${overlayName}.cow`;
}

/** The lock file guarding an overlay file. */
export function lockFileName(overlayFileName: string): string {
  return `${overlayFileName}.lock`;
}
