// Where an s3://BUCKET/KEY base is fetched from and with which keys, found the way the AWS
// tools find them:
//
//   credentials  with --s3-profile: that profile of the shared credentials file; else the
//                environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN); else
//                the profile AWS_PROFILE (or "default") of the shared credentials file
//                (AWS_SHARED_CREDENTIALS_FILE, ~/.aws/credentials), then of the config file
//                (AWS_CONFIG_FILE, ~/.aws/config); none at all: unsigned requests (a public
//                object);
//   region       --s3-region, AWS_REGION, AWS_DEFAULT_REGION, the profile's `region`, us-east-1;
//   endpoint     --s3-endpoint, AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, the profile's
//                `endpoint_url`, else AWS's own (https://BUCKET.s3.REGION.amazonaws.com/KEY).
//                Any other endpoint (radosgw, a local S3) is addressed path-style:
//                ENDPOINT/BUCKET/KEY.

import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { codedError } from '../block/coded-error.js';
import type { AwsCredentials } from './sigv4.js';

export interface S3Options {
  readonly endpoint?: string;
  readonly region?: string;
  readonly profile?: string;
}

export interface S3Location {
  /** The HTTP(S) URL the object is read from. */
  readonly url: URL;
  /** `s3://BUCKET/KEY`: what logs and messages show. */
  readonly shown: string;
  readonly region: string;
  /** Undefined: unsigned requests. */
  readonly credentials: AwsCredentials | undefined;
  /** Where the credentials came from, for messages ("environment", "profile x of FILE", "none"). */
  readonly credentialsFrom: string;
}

/** Whether `base` is an s3:// URL. */
export function isS3Base(base: string): boolean {
  return /^s3:\/\//i.test(base);
}

/** The sections of an INI file (`[name]`, `key = value`, `#` and `;` comments); undefined when it cannot be read. */
export function parseIni(text: string): Map<string, Map<string, string>> {
  const sections = new Map<string, Map<string, string>>();
  let current: Map<string, string> | undefined;
  for (const raw of text.split(/\r?\n/)) {
    const line = raw.trim();
    if (line === '' || line.startsWith('#') || line.startsWith(';')) continue;
    const section = /^\[\s*(.+?)\s*\]$/.exec(line);
    if (section !== null) {
      current = new Map();
      sections.set(section[1] as string, current);
      continue;
    }
    const pair = /^([^=]+?)\s*=\s*(.*)$/.exec(line);
    if (pair !== null && current !== undefined && !/^\s/.test(raw))
      current.set((pair[1] as string).toLowerCase(), pair[2] as string);
  }
  return sections;
}

function readIni(path: string): Map<string, Map<string, string>> | undefined {
  try {
    return parseIni(readFileSync(path, 'utf8'));
  } catch {
    return undefined;
  }
}

function credentialsOf(section: Map<string, string> | undefined): AwsCredentials | undefined {
  const accessKeyId = section?.get('aws_access_key_id');
  const secretAccessKey = section?.get('aws_secret_access_key');
  if (accessKeyId === undefined || secretAccessKey === undefined) return undefined;
  const sessionToken = section?.get('aws_session_token');
  return { accessKeyId, secretAccessKey, ...(sessionToken !== undefined ? { sessionToken } : {}) };
}

/** Bucket names S3 takes: 3-63 of a-z 0-9 . - (and, in old buckets, A-Z and _). */
const BUCKET = /^[A-Za-z0-9][A-Za-z0-9._-]{1,61}[A-Za-z0-9]$/;

/** Resolve `s3://BUCKET/KEY` (see the top of this file); throws EINVAL with one line for what cannot work. */
export function locateS3(base: string, options: S3Options = {}, env: NodeJS.ProcessEnv = process.env): S3Location {
  const match = /^s3:\/\/([^/]+)\/(.+)$/i.exec(base);
  if (match === null) throw codedError('EINVAL', `remote base ${base}: expected s3://BUCKET/KEY`);
  const bucket = match[1] as string;
  const key = match[2] as string;
  if (!BUCKET.test(bucket)) throw codedError('EINVAL', `remote base ${base}: ${bucket} is not a valid bucket name`);
  const shown = `s3://${bucket}/${key}`;

  const home = homedir();
  const credentialsFile = env['AWS_SHARED_CREDENTIALS_FILE'] ?? join(home, '.aws', 'credentials');
  const configFile = env['AWS_CONFIG_FILE'] ?? join(home, '.aws', 'config');
  const profile = options.profile ?? env['AWS_PROFILE'] ?? 'default';
  const fromCredentials = readIni(credentialsFile)?.get(profile);
  const fromConfig = readIni(configFile)?.get(profile === 'default' ? 'default' : `profile ${profile}`);

  let credentials: AwsCredentials | undefined;
  let credentialsFrom = 'none (unsigned requests)';
  const envKey = env['AWS_ACCESS_KEY_ID'];
  const envSecret = env['AWS_SECRET_ACCESS_KEY'];
  const envToken = env['AWS_SESSION_TOKEN'];
  const fileCredentials = credentialsOf(fromCredentials) ?? credentialsOf(fromConfig);
  if (options.profile === undefined && envKey !== undefined && envSecret !== undefined) {
    credentials = {
      accessKeyId: envKey,
      secretAccessKey: envSecret,
      ...(envToken !== undefined ? { sessionToken: envToken } : {}),
    };
    credentialsFrom = 'the environment';
  } else if (fileCredentials !== undefined) {
    credentials = fileCredentials;
    credentialsFrom = `profile ${profile} of ${credentialsOf(fromCredentials) !== undefined ? credentialsFile : configFile}`;
  } else if (options.profile !== undefined) {
    throw codedError(
      'EINVAL',
      `remote base ${shown}: no credentials for profile ${profile} in ${credentialsFile} or ${configFile}`,
    );
  }

  const region = options.region ?? env['AWS_REGION'] ?? env['AWS_DEFAULT_REGION'] ?? fromConfig?.get('region') ?? 'us-east-1';
  const endpoint = options.endpoint ?? env['AWS_ENDPOINT_URL_S3'] ?? env['AWS_ENDPOINT_URL'] ?? fromConfig?.get('endpoint_url');
  const path = key.split('/').map(encodeURIComponent).join('/');
  let url: URL;
  try {
    if (endpoint !== undefined) url = new URL(`${endpoint.replace(/\/+$/, '')}/${bucket}/${path}`);
    else if (!bucket.includes('.')) url = new URL(`https://${bucket}.s3.${region}.amazonaws.com/${path}`);
    else url = new URL(`https://s3.${region}.amazonaws.com/${bucket}/${path}`);
  } catch {
    throw codedError('EINVAL', `remote base ${shown}: the S3 endpoint ${endpoint} is not a valid URL`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') {
    throw codedError('EINVAL', `remote base ${shown}: the S3 endpoint must be http:// or https://, not ${endpoint}`);
  }
  return { url, shown, region, credentials, credentialsFrom };
}
