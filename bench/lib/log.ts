// Progress lines on stderr ("[bench HH:MM:SS] ..."), and the exit for a bad setting.

export function log(msg: string): void {
  const t = new Date().toISOString().slice(11, 19);
  process.stderr.write(`[bench ${t}] ${msg}\n`);
}

/** Log `msg` as an error and exit with `code` at once (no cleanup: nothing runs yet, or nothing is left). */
export function die(msg: string, code = 1): never {
  log(`error: ${msg}`);
  process.exit(code);
}
