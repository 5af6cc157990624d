// Finding the real NBD clients a test drives (qemu-img, nbdinfo, python3-libnbd, ...), and
// the skip policy when one is missing (ci.ts).

import { spawnSync } from 'node:child_process';
import { accessSync, existsSync, constants as fsConstants } from 'node:fs';
import { delimiter, join } from 'node:path';
import type { Test } from 'tap';
import { requireAll } from './ci.js';

/** Absolute path of `name` on PATH (then in `extraDirs`), or undefined. */
export function which(name: string, extraDirs: readonly string[] = []): string | undefined {
  for (const dir of [...(process.env['PATH'] ?? '').split(delimiter), ...extraDirs]) {
    if (dir === '') continue;
    const path = join(dir, name);
    try {
      accessSync(path, fsConstants.X_OK);
      return path;
    } catch {
      // not here
    }
  }
  return undefined;
}

/** The names in `names` that are not on PATH. */
export function missing(...names: string[]): string[] {
  return names.filter((n) => which(n) === undefined);
}

let pythonCache: string | null | undefined;

/**
 * A python3 interpreter that can `import nbd` (python3-libnbd). A pyenv or venv python3 first
 * on PATH usually cannot, so /usr/bin/python3 is tried too.
 */
export function pythonWithNbd(): string | undefined {
  if (pythonCache !== undefined) return pythonCache ?? undefined;
  pythonCache = null;
  const candidates = [which('python3'), '/usr/bin/python3', '/usr/local/bin/python3'];
  for (const py of candidates) {
    if (py === undefined || !existsSync(py)) continue;
    const r = spawnSync(py, ['-c', 'import nbd'], { timeout: 15_000, stdio: 'ignore' });
    if (r.status === 0) {
      pythonCache = py;
      break;
    }
  }
  return pythonCache ?? undefined;
}

/**
 * Go on (true) when every binary is installed, and python3-libnbd too when `python` is set;
 * otherwise skip the file or, under CI, fail (ci.ts).
 */
export function requireClients(t: Test, names: string[], python = false): boolean {
  const absent = missing(...names);
  if (python && pythonWithNbd() === undefined) absent.push('python3-libnbd');
  return requireAll(t, absent, 'make deps-test installs them');
}
