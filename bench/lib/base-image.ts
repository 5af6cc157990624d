// The base image every server serves: made once per run from pseudo-random bytes, hashed to
// prove no server wrote to it, and read (or memory primed) before each workload.

import { spawnSync } from 'node:child_process';
import { rmSync, statSync } from 'node:fs';
import { die, log } from './log.js';

export function sha256(path: string): string {
  const r = spawnSync('sha256sum', [path], { encoding: 'utf8' });
  if (r.status !== 0) die('sha256sum failed');
  return r.stdout.split(' ')[0] ?? '';
}

/** Write `size` pseudo-random bytes to `path` (exits if that fails); returns how they were made. */
export function makeBase(path: string, size: number): string {
  const haveOpenssl = spawnSync('sh', ['-c', 'command -v openssl'], { encoding: 'utf8' }).status === 0;
  // AES-CTR keystream of /dev/zero: incompressible and fast. /dev/urandom otherwise.
  const method = haveOpenssl ? 'openssl enc -aes-128-ctr of /dev/zero' : 'head -c of /dev/urandom';
  const gen = haveOpenssl
    ? `openssl enc -aes-128-ctr -pass pass:nbd-cow-bench-$$ -nosalt -pbkdf2 -in /dev/zero 2>/dev/null | head -c ${size} > "$1"`
    : `head -c ${size} /dev/urandom > "$1"`;
  const r = spawnSync('sh', ['-c', gen, 'sh', path], { stdio: ['ignore', 'ignore', 'inherit'] });
  let made = -1;
  try {
    made = statSync(path).size;
  } catch {
    // not created
  }
  if (made !== size) die(`base image has ${made} bytes, expected ${size} (exit ${r.status})`);
  return method;
}

/**
 * Before every workload: read the whole base once. Some VMs page out file cache that has not
 * been touched for a while (this one runs DAMON with a pageout scheme for pages idle about a
 * minute), so without this the first server after a run of write workloads meets a partly cold
 * base and warms it for the servers after it.
 */
export function warmBase(path: string): void {
  const r = spawnSync('cat', [path], { stdio: 'ignore' });
  if (r.status !== 0) log(`warming the base failed (exit ${r.status}); going on`);
}

/**
 * Before a write workload: write a scratch file (`scratch`) as big as the base and delete it.
 * On a VM whose balloon hands free pages back to the host, the first touch of fresh memory is
 * several times slower than reusing pages freed a moment ago, so without this a server's first
 * writes are fast or slow depending on what ran before it (bench/README.md, "Reading the numbers").
 */
export function primeMemory(scratch: string, size: number): void {
  const r = spawnSync('sh', ['-c', `head -c ${size} /dev/zero > "$1"`, 'sh', scratch], { stdio: 'ignore' });
  rmSync(scratch, { force: true });
  if (r.status !== 0) log(`priming memory failed (exit ${r.status}); going on`);
}
