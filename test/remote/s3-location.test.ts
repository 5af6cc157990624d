import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { isS3Base, locateS3, parseIni } from '../../lib/remote/s3-location.js';

t.test('ini files as the AWS tools write them', async (t) => {
  const ini = parseIni(
    '# comment\n[default]\naws_access_key_id = A\n; other\n[profile lab]\nRegion=eu-west-1\ns3 =\n  endpoint_url = x\n',
  );
  t.same([...ini.keys()], ['default', 'profile lab']);
  t.equal(ini.get('default')?.get('aws_access_key_id'), 'A');
  t.equal(ini.get('profile lab')?.get('region'), 'eu-west-1', 'keys are case-insensitive');
  t.equal(ini.get('profile lab')?.get('endpoint_url'), undefined, "a nested service section's keys are not the profile's");
});

t.test('where the object is, and with which keys', async (t) => {
  const dir = t.testdir();
  const credentials = join(dir, 'credentials');
  const config = join(dir, 'config');
  writeFileSync(
    credentials,
    '[default]\naws_access_key_id = FILEKEY\naws_secret_access_key = filesecret\n[lab]\naws_access_key_id = LABKEY\naws_secret_access_key = labsecret\naws_session_token = labtoken\n',
  );
  writeFileSync(
    config,
    '[default]\nregion = eu-central-1\n[profile lab]\nregion = ap-south-1\nendpoint_url = http://rgw.lab:7480/\n',
  );
  const files = { AWS_SHARED_CREDENTIALS_FILE: credentials, AWS_CONFIG_FILE: config, HOME: dir };

  t.ok(isS3Base('s3://b/k'));
  t.notOk(isS3Base('https://b/k'));

  const aws = locateS3('s3://my-bucket/dir/a b.raw', {}, { ...files });
  t.equal(
    aws.url.href,
    'https://my-bucket.s3.eu-central-1.amazonaws.com/dir/a%20b.raw',
    "AWS's endpoint, virtual-hosted, the default profile's region",
  );
  t.same(aws.credentials, { accessKeyId: 'FILEKEY', secretAccessKey: 'filesecret' });
  t.equal(aws.credentialsFrom, `profile default of ${credentials}`);
  t.equal(aws.shown, 's3://my-bucket/dir/a b.raw');

  const dotted = locateS3('s3://my.bucket/k', {}, { ...files, AWS_REGION: 'us-west-2' });
  t.equal(
    dotted.url.href,
    'https://s3.us-west-2.amazonaws.com/my.bucket/k',
    'a dotted bucket: path-style (its name breaks the certificate)',
  );

  const env = locateS3(
    's3://b1b/k',
    {},
    { ...files, AWS_ACCESS_KEY_ID: 'ENVKEY', AWS_SECRET_ACCESS_KEY: 'envsecret', AWS_SESSION_TOKEN: 'tok' },
  );
  t.same(
    env.credentials,
    { accessKeyId: 'ENVKEY', secretAccessKey: 'envsecret', sessionToken: 'tok' },
    'the environment before the files',
  );

  const lab = locateS3(
    's3://b1b/k',
    { profile: 'lab' },
    { ...files, AWS_ACCESS_KEY_ID: 'ENVKEY', AWS_SECRET_ACCESS_KEY: 'envsecret' },
  );
  t.same(
    lab.credentials,
    { accessKeyId: 'LABKEY', secretAccessKey: 'labsecret', sessionToken: 'labtoken' },
    '--s3-profile before the environment',
  );
  t.equal(lab.region, 'ap-south-1');
  t.equal(lab.url.href, 'http://rgw.lab:7480/b1b/k', "the profile's endpoint_url, path-style");

  const flags = locateS3(
    's3://b1b/k',
    { profile: 'lab', endpoint: 'http://127.0.0.1:9000', region: 'r1' },
    { ...files, AWS_ENDPOINT_URL: 'http://env:1' },
  );
  t.equal(flags.url.href, 'http://127.0.0.1:9000/b1b/k', 'flags first');
  t.equal(flags.region, 'r1');
  t.equal(
    locateS3('s3://b1b/k', {}, { ...files, AWS_ENDPOINT_URL_S3: 'http://s3only:1', AWS_ENDPOINT_URL: 'http://all:1' }).url.host,
    's3only:1',
  );

  const none = locateS3(
    's3://b1b/k',
    {},
    { HOME: dir, AWS_SHARED_CREDENTIALS_FILE: join(dir, 'missing'), AWS_CONFIG_FILE: join(dir, 'missing') },
  );
  t.equal(none.credentials, undefined, 'no keys anywhere: unsigned');
  t.equal(none.region, 'us-east-1');

  t.throws(() => locateS3('s3://b1b/k', { profile: 'nope' }, files), {
    code: 'EINVAL',
    message: /no credentials for profile nope/,
  });
  t.throws(() => locateS3('s3://bucket-only', {}, files), { message: 'remote base s3://bucket-only: expected s3://BUCKET/KEY' });
  t.throws(() => locateS3('s3://-bad-/k', {}, files), { message: /is not a valid bucket name/ });
  t.throws(() => locateS3('s3://b1b/k', { endpoint: 'ftp://x' }, files), { message: /must be http:\/\/ or https:\/\// });
  t.throws(() => locateS3('s3://b1b/k', { endpoint: 'not a url' }, files), { message: /is not a valid URL/ });
});
