// AWS Signature Version 4 for the S3 requests of an s3:// base: GETs with a Range and no body.
// Our own small implementation on node:crypto, not the AWS SDK: a remote base needs one kind of
// request signed, and the SDK would bring dozens of packages to do it. It is checked against
// AWS's published S3 example (test/remote/sigv4.test.ts) and against a real radosgw
// (test/e2e/remote-base-s3.test.ts).
//
//   canonical request  METHOD \n PATH (each segment URI-encoded) \n QUERY (sorted, encoded) \n
//                      each signed header "name:value" \n ... \n \n signed header names ;-joined \n
//                      payload hash (for a GET without body: the sha256 of nothing)
//   string to sign     AWS4-HMAC-SHA256 \n DATE \n DAY/REGION/s3/aws4_request \n sha256(canonical)
//   key                HMAC chain: "AWS4"+secret → day → region → service → "aws4_request"
//
// Signed: host, range (when sent) and every x-amz-* header; other headers (If-Match, User-Agent)
// are sent unsigned, which S3 allows.

import { createHash, createHmac } from 'node:crypto';

export interface AwsCredentials {
  readonly accessKeyId: string;
  readonly secretAccessKey: string;
  readonly sessionToken?: string;
}

export interface SigningRequest {
  readonly method: string;
  readonly url: URL;
  /** Headers to send; those signed (see above) must be here, lower or mixed case. */
  readonly headers: Readonly<Record<string, string>>;
}

/** sha256 of the empty payload: a GET's x-amz-content-sha256. */
export const EMPTY_PAYLOAD_SHA256 = createHash('sha256').update('').digest('hex');

const sha256Hex = (text: string): string => createHash('sha256').update(text, 'utf8').digest('hex');
const hmac = (key: Buffer | string, text: string): Buffer => createHmac('sha256', key).update(text, 'utf8').digest();

/** RFC 3986 percent-encoding as SigV4 wants it: everything but A-Z a-z 0-9 - _ . ~ (and '/' in paths). */
export function uriEncode(text: string, keepSlash: boolean): string {
  let out = '';
  for (const byte of Buffer.from(text, 'utf8')) {
    const c = String.fromCharCode(byte);
    if (/[A-Za-z0-9\-_.~]/.test(c) || (keepSlash && c === '/')) out += c;
    else out += `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return out;
}

/** The path as S3 canonicalizes it: decoded once, then each byte encoded (not twice). */
function canonicalPath(url: URL): string {
  return uriEncode(decodeURIComponent(url.pathname), true) || '/';
}

function canonicalQuery(url: URL): string {
  return [...url.searchParams.entries()]
    .map(([k, v]) => [uriEncode(k, false), uriEncode(v, false)] as const)
    .sort(([a, av], [b, bv]) => (a === b ? (av < bv ? -1 : 1) : a < b ? -1 : 1))
    .map(([k, v]) => `${k}=${v}`)
    .join('&');
}

/** `20130524T000000Z` for `date`. */
export function amzDate(date: Date): string {
  return date
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d{3}/, '');
}

/**
 * The headers that sign `request` for S3 in `region` at `date`: x-amz-date, x-amz-content-sha256,
 * x-amz-security-token (with a session token) and Authorization, to send with the request's own.
 */
export function signS3Request(
  request: SigningRequest,
  credentials: AwsCredentials,
  region: string,
  date: Date = new Date(),
): Record<string, string> {
  const stamp = amzDate(date);
  const day = stamp.slice(0, 8);
  const added: Record<string, string> = {
    'x-amz-date': stamp,
    'x-amz-content-sha256': EMPTY_PAYLOAD_SHA256,
    ...(credentials.sessionToken !== undefined ? { 'x-amz-security-token': credentials.sessionToken } : {}),
  };
  const all = new Map<string, string>();
  for (const [name, value] of Object.entries({ ...request.headers, ...added })) all.set(name.toLowerCase(), value);
  all.set('host', request.url.host);
  const signed = [...all.keys()].filter((name) => name === 'host' || name === 'range' || name.startsWith('x-amz-')).sort();
  const canonical = [
    request.method,
    canonicalPath(request.url),
    canonicalQuery(request.url),
    ...signed.map((name) => `${name}:${(all.get(name) ?? '').trim().replace(/\s+/g, ' ')}`),
    '',
    signed.join(';'),
    all.get('x-amz-content-sha256') ?? EMPTY_PAYLOAD_SHA256,
  ].join('\n');
  const scope = `${day}/${region}/s3/aws4_request`;
  const toSign = ['AWS4-HMAC-SHA256', stamp, scope, sha256Hex(canonical)].join('\n');
  const key = hmac(hmac(hmac(hmac(`AWS4${credentials.secretAccessKey}`, day), region), 's3'), 'aws4_request');
  const signature = createHmac('sha256', key).update(toSign, 'utf8').digest('hex');
  return {
    ...added,
    Authorization: `AWS4-HMAC-SHA256 Credential=${credentials.accessKeyId}/${scope},SignedHeaders=${signed.join(';')},Signature=${signature}`,
  };
}
