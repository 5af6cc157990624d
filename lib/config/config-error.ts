// What is wrong with a configuration file, and where: `FILE:LINE:COL: KEY.PATH: what is wrong`,
// the form compilers use, so an editor or `grep -n` takes the operator straight to the key.
// The line and column are 1-based; either part is left out when it does not apply (a missing
// file has no line, an empty file no key).

export interface ConfigErrorLocation {
  /** The file as the operator named it. */
  readonly file: string;
  readonly line?: number;
  readonly column?: number;
  /** Where in the document: `exports.debian.block-size`, `listen[1].tcp`. */
  readonly keyPath?: string;
}

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
  readonly file: string;
  readonly line: number | undefined;
  readonly column: number | undefined;
  readonly keyPath: string | undefined;
  /** The message without its location: what is wrong. */
  readonly reason: string;

  constructor(location: ConfigErrorLocation, reason: string) {
    super(formatConfigError(location, reason));
    this.file = location.file;
    this.line = location.line;
    this.column = location.column;
    this.keyPath = location.keyPath;
    this.reason = reason;
  }
}

function formatConfigError(location: ConfigErrorLocation, reason: string): string {
  const { file, line, column, keyPath } = location;
  const where = line === undefined ? file : `${file}:${line}:${column ?? 1}`;
  return keyPath === undefined ? `${where}: ${reason}` : `${where}: ${keyPath}: ${reason}`;
}
