// Readers for the kinds of value settings share: sizes, paths, host:port addresses, address
// ranges, octal modes, users and groups. Each takes a ConfigValue and fails at it with what was
// expected, reusing the check the command line uses for the same flag, so a file and a flag
// accept the same things.

import { resolve } from 'node:path';
import { parseHostPort } from '../host-port.js';
import { AccessList } from '../server/access-list.js';
import { parseByteSize } from '../size.js';
import type { ConfigValue } from './config-value.js';

/** Largest user or group id: (uid_t)-1 means "no change" to chown and setuid. */
const MAX_ID = 0xfffffffe;
const SIZE_EXAMPLE = 'a size such as 4096, 64K, 512M or 20G (K, M, G, T: powers of 1024)';

/** Bytes, from a number (`4096`) or a size string (`20G`); `check` may refuse it with a reason. */
export function readSize(value: ConfigValue, check: (bytes: number) => string | undefined = () => undefined): number {
  const raw = value.scalar;
  let bytes: number;
  if (typeof raw === 'number') {
    if (!Number.isSafeInteger(raw) || raw < 0) value.fail(`expected ${SIZE_EXAMPLE}, not ${value.describe()}`);
    bytes = raw;
  } else if (typeof raw === 'string') {
    try {
      bytes = parseByteSize(raw);
    } catch (err) {
      value.fail(whatWasExpected(err, value));
    }
  } else {
    value.fail(`expected ${SIZE_EXAMPLE}, not ${value.describe()}`);
  }
  const problem = check(bytes);
  if (problem !== undefined) value.fail(problem);
  return bytes;
}

/**
 * A path, made absolute against `dir` (the configuration file's directory) when relative. Only
 * its form is checked here; whether it exists is for the server to find out when it starts.
 */
export function readPath(value: ConfigValue, dir: string): string {
  const path = value.nonEmptyString('a path');
  if (path.includes('\0')) value.fail('a path cannot contain a NUL character');
  return resolve(dir, path);
}

/** HOST:PORT or [IPv6]:PORT. */
export function readHostPort(value: ConfigValue): { host: string; port: number } {
  const text = value.string('HOST:PORT, such as 127.0.0.1:10809 or [::1]:10809');
  try {
    return parseHostPort(text);
  } catch (err) {
    return value.fail(whatWasExpected(err, value));
  }
}

/** A list of addresses and CIDR ranges (`10.0.0.0/8`, `::1`), each checked as --allow checks it. */
export function readAllowList(value: ConfigValue): string[] {
  const items = value.list('a list of addresses or CIDR ranges, such as [10.0.0.0/8, "::1"]');
  if (items.length === 0) value.fail('an empty list admits no TCP client; leave allow out to admit everyone');
  return items.map((item) => {
    const rule = item.nonEmptyString('an address or CIDR range, such as 10.0.0.0/8');
    try {
      new AccessList([rule]);
    } catch (err) {
      item.fail((err as Error).message);
    }
    return rule;
  });
}

/** Frozen overlays stacked on a base, bottom first: a list of paths, each resolved like base. */
export function readLayers(value: ConfigValue, dir: string): string[] {
  return value
    .list('a list of frozen overlay files, bottom first, such as [layers/tools.cow]')
    .map((item) => readPath(item, dir));
}

/**
 * Permission bits in octal, as chmod takes them: `"0660"`, `"660"`, `0o660`, or an unquoted
 * `0660` (YAML 1.2 reads that as the decimal 660; a leading 0 means octal here, as in YAML 1.1
 * and chmod). A plain decimal number is refused: `socket-mode: 440` would be 0o670.
 */
export function readSocketMode(value: ConfigValue): number {
  const raw = value.scalar;
  const written = typeof raw === 'string' ? raw : typeof raw === 'number' ? (value.plainSource ?? '') : '';
  const octal = /^(?:0o?)?([0-7]{1,3})$/.exec(written)?.[1];
  const clearlyOctal = typeof raw === 'string' || /^0/.test(written);
  if (octal === undefined || !clearlyOctal) {
    value.fail(`expected an octal mode from "0" to "0777", such as "0660" (quoted) or 0o660, not ${value.describe()}`);
  }
  return Number.parseInt(octal, 8);
}

/** A user or group: a name, or a numeric id (`1000` or `"1000"`, as chown reads it). */
export function readAccount(value: ConfigValue, kind: 'user' | 'group'): string | number {
  const raw = value.scalar;
  if (typeof raw === 'number') {
    if (!Number.isSafeInteger(raw) || raw < 0 || raw > MAX_ID) value.fail(`expected a ${kind} name or an id from 0 to ${MAX_ID}`);
    return raw;
  }
  return value.nonEmptyString(`a ${kind} name or id`);
}

/** A parser's message, and what the value was when the message says what was expected. */
function whatWasExpected(err: unknown, value: ConfigValue): string {
  const message = (err as Error).message;
  return message.startsWith('expected ') ? `${message}, not ${value.describe()}` : message;
}
