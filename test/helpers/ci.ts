// The one answer to "is this CI?" and the one skip policy for tests that need something from
// outside the project (a real NBD client, QEMU, a guest's tools, the IPv6 loopback). On a
// developer's machine a missing piece skips the file with the reason; under CI, whose set-up
// (make deps-test) installs everything, it fails: a skip there would hide an install bug.

import type { Test } from 'tap';

/** True when the CI variable is set to anything but empty, `false` or `0` (as CI services set it). */
export function isCI(): boolean {
  const value = process.env['CI'];
  return value !== undefined && value !== '' && value !== 'false' && value !== '0';
}

/**
 * Go on (true) when nothing is `absent`; otherwise skip the whole file (plan 0 with the reason)
 * or, under CI, fail naming what is missing and `hint` (how to install it). Call it at the top
 * level of a test file, before any subtest.
 */
export function requireAll(t: Test, absent: readonly string[], hint: string): boolean {
  if (absent.length === 0) return true;
  const reason = `not available: ${absent.join(', ')}`;
  if (isCI()) t.fail(`${reason} (${hint})`);
  else t.plan(0, reason);
  return false;
}
