// The `exports:` mapping: export name → its base image and overlay settings, one key for each
// flag of the same name (--read-only, --block-size, --overlays, …), plus the two only a file can
// say: which TCP clients may use this export (allow) and whether it needs TLS (require-tls).
// Defaults are the command line's, so a file and the flags serve the same export.

import { validateBlockSize } from '../block/overlay-layout.js';
import { isValidNamePart, NAME_RULE } from '../block/overlay-names.js';
import { DEFAULT_BLOCK_SIZE } from '../defaults.js';
import { MIN_CACHE_SIZE, type RemoteOptions } from '../remote/remote-options.js';
import { isRemoteBase } from '../remote/remote-url.js';
import type { S3Options } from '../remote/s3-location.js';
import { NAMED_OVERLAY_OWNERS, OVERLAY_POLICIES } from '../server/exports.js';
import type { TlsMode } from '../server/tls-credentials.js';
import { type ConfigMapping, type ConfigValue, quote } from './config-value.js';
import type { ExportConfig } from './server-config.js';
import { readAllowList, readLayers, readPath, readSize } from './setting-values.js';

const EXPORT_KEYS = [
  'base',
  'layers',
  'description',
  'read-only',
  'block-size',
  'overlays',
  'overlay-dir',
  'max-overlay-size',
  'max-overlay-dir-size',
  'elide-base-matches',
  'named-overlays-owner',
  'allow',
  'require-tls',
  'cache-dir',
  'cache-size',
  'prefetch',
  'remote-timeout',
  'remote-retries',
  's3-endpoint',
  's3-region',
  's3-profile',
] as const;

export interface ExportContext {
  /** The configuration file's directory, against which relative paths resolve. */
  readonly dir: string;
  /** tls.mode, or off without a tls: mapping. */
  readonly tlsMode: TlsMode;
}

/** The exports in `value`, a non-empty mapping from names to settings, in the file's order. */
export function readExports(value: ConfigValue, context: ExportContext): ExportConfig[] {
  const named = value.mapping(undefined, 'a mapping from export names to their settings, such as debian: { base: PATH }');
  if (named.size === 0) value.fail('no exports: name at least one, with its base image');
  return Array.from(named.entries(), ([name, settings]) => readExport(name, settings, context));
}

function readExport(name: string, settings: ConfigValue, { dir, tlsMode }: ExportContext): ExportConfig {
  if (!isValidNamePart(name)) settings.fail(`${quote(name)} is not a valid export name: ${NAME_RULE}`);
  const fields = settings.mapping(EXPORT_KEYS, 'the settings of an export, at least base: PATH');
  const exp: ExportConfig = {
    name,
    base: readBase(fields.require('base', 'the base image this export serves'), dir),
    ...remoteSettings(fields, dir),
    ...fields.optional('layers', 'layers', (value) => readLayers(value, dir)),
    ...fields.optional('description', 'description', (value) => value.string()),
    readOnly: fields.read('read-only', (value) => value.boolean(), false),
    blockSize: fields.read('block-size', readBlockSize, DEFAULT_BLOCK_SIZE),
    overlays: fields.read('overlays', (value) => value.oneOf(OVERLAY_POLICIES), 'both'),
    ...fields.optional('overlay-dir', 'overlayDir', (value) => readPath(value, dir)),
    ...fields.optional('max-overlay-size', 'maxOverlaySize', readSpaceLimit),
    ...fields.optional('max-overlay-dir-size', 'maxOverlayDirSize', readSpaceLimit),
    ...fields.optional('elide-base-matches', 'elideBaseMatches', (value) => value.boolean()),
    namedOverlayOwner: fields.read('named-overlays-owner', (value) => value.oneOf(NAMED_OVERLAY_OWNERS), 'anyone'),
    ...fields.optional('allow', 'allow', readAllowList),
    requireTls: fields.read('require-tls', (value) => value.boolean(), tlsMode === 'require'),
  };
  checkTlsNeeds(exp, fields, tlsMode);
  return exp;
}

/** Refuse what TLS settings make impossible: TLS-only features without TLS, plain clients when TLS is required. */
function checkTlsNeeds(exp: ExportConfig, fields: ConfigMapping, tlsMode: TlsMode): void {
  const needsTls = 'needs TLS: set tls.mode to on or require, with credentials';
  if (tlsMode === 'off' && exp.namedOverlayOwner === 'tls-identity') {
    fields.get('named-overlays-owner')?.fail(`tls-identity ${needsTls}`);
  }
  if (tlsMode === 'off' && exp.requireTls) fields.get('require-tls')?.fail(needsTls);
  if (tlsMode === 'require' && !exp.requireTls) {
    fields.get('require-tls')?.fail('cannot be false while tls.mode is require: every client must start TLS first');
  }
}

/** A path (resolved like any other) or an http://, https:// or s3:// URL, kept as written. */
function readBase(value: ConfigValue, dir: string): string {
  const text = value.nonEmptyString('a path or an http(s):// or s3:// URL');
  return isRemoteBase(text) ? text : readPath(value, dir);
}

/** cache-dir, cache-size, prefetch, remote-timeout and remote-retries: as `remote` when any is set. */
function remoteSettings(fields: ConfigMapping, dir: string): { remote?: RemoteOptions } {
  const remote: RemoteOptions = {
    ...fields.optional('cache-dir', 'cacheDir', (value) => readPath(value, dir)),
    ...fields.optional('cache-size', 'cacheSize', (value) =>
      readSize(value, (bytes) => (bytes < MIN_CACHE_SIZE ? `expected at least ${MIN_CACHE_SIZE >> 20}M` : undefined)),
    ),
    ...fields.optional('prefetch', 'prefetch', (value) => value.boolean()),
    ...fields.optional('remote-timeout', 'timeoutMs', (value) => readSeconds(value) * 1000),
    ...fields.optional('remote-retries', 'retries', readRetries),
    ...s3Settings(fields),
  };
  return Object.keys(remote).length === 0 ? {} : { remote };
}

/** s3-endpoint, s3-region and s3-profile: as `s3` when any is set. */
function s3Settings(fields: ConfigMapping): { s3?: S3Options } {
  const s3: S3Options = {
    ...fields.optional('s3-endpoint', 'endpoint', (value) => value.nonEmptyString('an http(s):// URL')),
    ...fields.optional('s3-region', 'region', (value) => value.nonEmptyString('a region such as eu-west-1')),
    ...fields.optional('s3-profile', 'profile', (value) => value.nonEmptyString('a profile name')),
  };
  return Object.keys(s3).length === 0 ? {} : { s3 };
}

/** Seconds, more than 0 and at most an hour (fractions allowed). */
function readSeconds(value: ConfigValue): number {
  const seconds = value.number('a number of seconds');
  if (!(seconds > 0 && seconds <= 3600)) value.fail(`expected seconds above 0 and at most 3600, not ${value.describe()}`);
  return seconds;
}

function readRetries(value: ConfigValue): number {
  const retries = value.number('a number of retries');
  if (!Number.isInteger(retries) || retries < 0 || retries > 20)
    value.fail(`expected a whole number from 0 to 20, not ${value.describe()}`);
  return retries;
}

/** A power of two from 512 to 1M, as --block-size takes it (`4096` or `64K`). */
function readBlockSize(value: ConfigValue): number {
  return readSize(value, (bytes) => {
    try {
      validateBlockSize(bytes);
      return undefined;
    } catch (err) {
      // validateBlockSize says "block size N is not…": the key path already says block size.
      return (err as Error).message.replace(/^block size /, '');
    }
  });
}

/** A space limit: at least one byte (leave the key out for no limit). */
function readSpaceLimit(value: ConfigValue): number {
  return readSize(value, (bytes) =>
    bytes === 0 ? 'expected a limit of at least 1 byte (leave the key out for no limit)' : undefined,
  );
}
