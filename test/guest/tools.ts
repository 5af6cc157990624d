// Finding the host tools the guest tests need, and what to do when one is missing:
// fail loudly when CI is set, skip with the reason otherwise.

import type { Test } from 'tap';
import { requireAll } from '../helpers/ci.js';
import { which } from '../helpers/clients.js';
import { ROOT } from '../helpers/processes.js';

export { ROOT };

/** Debian package of each tool every guest test runs. */
const GUEST_TOOL_PACKAGES: Record<string, string> = {
  'qemu-system-x86_64': 'qemu-system-x86',
  'nbd-client': 'nbd-client',
  'mkfs.ext4': 'e2fsprogs',
  busybox: 'busybox-static',
  'apt-get': 'apt',
  'apt-cache': 'apt',
  'dpkg-deb': 'dpkg',
  ldd: 'libc-bin',
  env: 'coreutils',
};

// Used when present, so not listed above: setpriv (util-linux) and timeout (coreutils), always
// there on Debian, so that no child outlives a test; xz (xz-utils) for compressed modules.

/** Every tool the guest suite runs (xz only when the kernel's modules are compressed). */
export const GUEST_TOOLS = Object.keys(GUEST_TOOL_PACKAGES);

/** The TLS guest tests also make certificates (test/helpers/tls-fixtures.ts). */
export const TLS_GUEST_TOOLS = [...GUEST_TOOLS, 'openssl'];

/** Debian package of each tool, for the messages. */
export const TOOL_PACKAGES: Record<string, string> = { ...GUEST_TOOL_PACKAGES, openssl: 'openssl' };

/** Absolute path of `name` on PATH or in the sbin directories (nbd-client and mkfs live there). */
export function findTool(name: string): string | undefined {
  return which(name, ['/usr/local/sbin', '/usr/sbin', '/sbin', '/usr/bin', '/bin']);
}

export function tool(name: string): string {
  const path = findTool(name);
  if (path === undefined) throw new Error(`${name} is not installed (Debian package ${TOOL_PACKAGES[name] ?? name})`);
  return path;
}

/**
 * True when every guest tool is there; otherwise the file is skipped or, under CI, fails,
 * naming the missing tools and their packages (ci.ts).
 */
export function requireGuestTools(t: Test, names: readonly string[] = GUEST_TOOLS): boolean {
  const absent = names.filter((n) => findTool(n) === undefined);
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    absent.push(`a linux x64 host (this is ${process.platform} ${process.arch})`);
  }
  const pkgs = [...new Set(absent.map((n) => TOOL_PACKAGES[n]).filter((p) => p !== undefined))];
  return requireAll(t, absent, pkgs.length > 0 ? `apt-get install ${pkgs.join(' ')}` : 'make deps-test');
}

/** Progress lines on stderr (tap shows them), prefixed so they are easy to find. */
export function log(message: string): void {
  process.stderr.write(`# [guest] ${message}\n`);
}
