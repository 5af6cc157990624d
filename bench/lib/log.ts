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

/** A positive number from the environment variable `name`, or `fallback` when it is unset or empty. */
export function envNumber(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isFinite(n) || n <= 0) die(`${name}=${raw}: expected a positive number`);
  return n;
}
