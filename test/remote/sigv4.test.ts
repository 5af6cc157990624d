import t from 'tap';
import { amzDate, EMPTY_PAYLOAD_SHA256, signS3Request, uriEncode } from '../../lib/remote/sigv4.js';

// AWS's published SigV4 example for S3 ("GET Object", Signature Calculations for the
// Authorization Header): the same request must give the same signature.
const EXAMPLE = {
  credentials: { accessKeyId: 'AKIAIOSFODNN7EXAMPLE', secretAccessKey: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY' },
  date: new Date(Date.UTC(2013, 4, 24, 0, 0, 0)),
};

t.test("AWS's S3 GET Object example", async (t) => {
  const headers = signS3Request(
    { method: 'GET', url: new URL('https://examplebucket.s3.amazonaws.com/test.txt'), headers: { Range: 'bytes=0-9' } },
    EXAMPLE.credentials,
    'us-east-1',
    EXAMPLE.date,
  );
  t.same(headers, {
    'x-amz-date': '20130524T000000Z',
    'x-amz-content-sha256': EMPTY_PAYLOAD_SHA256,
    Authorization:
      'AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request,' +
      'SignedHeaders=host;range;x-amz-content-sha256;x-amz-date,' +
      'Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41',
  });
});

t.test('a session token is sent and signed; other headers are not signed', async (t) => {
  const request = {
    method: 'GET',
    url: new URL('http://127.0.0.1:7480/bucket/a%20b/c.raw?versionId=x&a=1'),
    headers: { Range: 'bytes=0-0', 'If-Match': '"abc"', 'User-Agent': 'nbd-cow' },
  };
  const withToken = signS3Request(request, { ...EXAMPLE.credentials, sessionToken: 'TOKEN' }, 'eu-west-1', EXAMPLE.date);
  t.equal(withToken['x-amz-security-token'], 'TOKEN');
  t.match(withToken['Authorization'], /SignedHeaders=host;range;x-amz-content-sha256;x-amz-date;x-amz-security-token,/);
  t.match(withToken['Authorization'], /Credential=AKIAIOSFODNN7EXAMPLE\/20130524\/eu-west-1\/s3\/aws4_request/);
  const other = signS3Request(
    { ...request, headers: { ...request.headers, 'If-Match': '"other"' } },
    EXAMPLE.credentials,
    'eu-west-1',
    EXAMPLE.date,
  );
  const same = signS3Request(request, EXAMPLE.credentials, 'eu-west-1', EXAMPLE.date);
  t.equal(other['Authorization'], same['Authorization'], 'If-Match is not part of the signature');
  const later = signS3Request(request, EXAMPLE.credentials, 'eu-west-1', new Date(EXAMPLE.date.getTime() + 1000));
  t.not(later['Authorization'], same['Authorization'], 'the time is');
});

t.test('encoding and dates', async (t) => {
  t.equal(uriEncode('a b/c~d+é', true), 'a%20b/c~d%2B%C3%A9');
  t.equal(uriEncode('a/b', false), 'a%2Fb');
  t.equal(amzDate(new Date(Date.UTC(2026, 11, 2, 3, 4, 5, 678))), '20261202T030405Z');
});
