// An s3://BUCKET/KEY base from a real S3 API: Ceph's radosgw on a one-node cluster started here
// (test/helpers/radosgw.ts). nbd-cow signs its range requests with SigV4 (lib/remote/sigv4.ts),
// finds endpoint, region and keys the way the AWS tools do (environment, shared files, flags),
// serves the object byte for byte, names radosgw's error codes when refused, and takes an object
// replaced in the bucket for another base.

import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { requireClients } from '../helpers/clients.js';
import { describeRun, type RunResult } from '../helpers/processes.js';
import { type Radosgw, requireRadosgw, startRadosgw } from '../helpers/radosgw.js';
import { runCli } from '../helpers/server-process.js';

const MiB = 1024 * 1024;

/** The environment of a shell with no AWS settings of its own. */
function cleanEnv(): NodeJS.ProcessEnv {
  const env = { ...process.env };
  for (const name of Object.keys(env)) if (name.startsWith('AWS_')) delete env[name];
  return { ...env, HOME: '/nonexistent-home' };
}

/** `nbd-cow run BASE ARGS -- sh -c SCRIPT` ($NBD_URI set) with `env`. */
function runWith(env: NodeJS.ProcessEnv, base: string, args: readonly string[], script: string): Promise<RunResult> {
  return runCli(['run', base, ...args, '--', 'sh', '-c', script], { env, timeoutMs: 120_000 });
}

if (requireRadosgw(t) && requireClients(t, ['qemu-img', 'qemu-io', 'nbdinfo'])) {
  let gw: Radosgw;
  const dir = t.testdir();
  const image = randomBytes(8 * MiB + 4096);
  const imagePath = join(dir, 'golden.raw');
  writeFileSync(imagePath, image);

  t.before(async () => {
    gw = await startRadosgw(t);
    await gw.createBucket('images');
    await gw.putObject('images', 'golden.raw', imagePath);
  });

  t.test('keys from the environment: served byte for byte, the secret never shown', async (t) => {
    const env = {
      ...cleanEnv(),
      AWS_ACCESS_KEY_ID: gw.user.accessKeyId,
      AWS_SECRET_ACCESS_KEY: gw.user.secretAccessKey,
      AWS_ENDPOINT_URL: gw.endpoint,
    };
    const r = await runWith(
      env,
      's3://images/golden.raw',
      ['--cache-dir', join(dir, 'cache-env')],
      `qemu-img compare -f raw ${imagePath} "$NBD_URI" && nbdinfo "$NBD_URI"`,
    );
    t.equal(r.code, 0, describeRun(r));
    t.match(r.stdout, 'Images are identical.');
    t.match(r.stdout, /description: golden\.raw with a private copy-on-write overlay/);
    t.match(r.stderr, /remote base s3:\/\/images\/golden\.raw: fetched 8\.00 MiB/, 'the log names the object as s3://');
    t.notMatch(`${r.stdout}${r.stderr}`, gw.user.secretAccessKey);
  });

  t.test('keys from a profile of the shared credentials file, endpoint and region by flag or config file', async (t) => {
    const credentials = join(dir, 'credentials');
    writeFileSync(
      credentials,
      `[default]\naws_access_key_id = WRONG\naws_secret_access_key = wrong\n\n[lab]\naws_access_key_id = ${gw.user.accessKeyId}\n` +
        `aws_secret_access_key = ${gw.user.secretAccessKey}\n`,
    );
    const env = { ...cleanEnv(), AWS_SHARED_CREDENTIALS_FILE: credentials };
    const flags = await runWith(
      env,
      's3://images/golden.raw',
      ['--cache-dir', join(dir, 'cache-profile'), '--s3-profile', 'lab', '--s3-endpoint', gw.endpoint, '--s3-region', gw.region],
      `qemu-img compare -f raw ${imagePath} "$NBD_URI"`,
    );
    t.equal(flags.code, 0, describeRun(flags));

    const byName = await runWith(
      { ...env, AWS_PROFILE: 'lab', AWS_ENDPOINT_URL_S3: gw.endpoint },
      's3://images/golden.raw',
      ['--cache-dir', join(dir, 'cache-profile')],
      `qemu-img compare -f raw ${imagePath} "$NBD_URI"`,
    );
    t.equal(byName.code, 0, `AWS_PROFILE and AWS_ENDPOINT_URL_S3 (${describeRun(byName)})`);
    t.match(byName.stderr, /fetched 0\.00 MiB in 1 requests/, 'the cache kept from the run before: the probe only');

    const wrong = await runWith(
      { ...env, AWS_ENDPOINT_URL: gw.endpoint },
      's3://images/golden.raw',
      ['--cache-dir', join(dir, 'c3')],
      'true',
    );
    t.equal(wrong.code, 1);
    t.equal(
      wrong.stderr.trim(),
      'nbd-cow: cannot open base image s3://images/golden.raw: the server answered 403 (InvalidAccessKeyId)',
      'the default profile has wrong keys: radosgw says which',
    );
    const noProfile = await runWith(
      env,
      's3://images/golden.raw',
      ['--s3-profile', 'nope', '--cache-dir', join(dir, 'c3')],
      'true',
    );
    t.match(noProfile.stderr, /^nbd-cow: remote base s3:\/\/images\/golden\.raw: no credentials for profile nope in /);
  });

  t.test('refusals name the S3 error', async (t) => {
    const env = {
      ...cleanEnv(),
      AWS_ACCESS_KEY_ID: gw.user.accessKeyId,
      AWS_SECRET_ACCESS_KEY: 'not-the-secret',
      AWS_ENDPOINT_URL: gw.endpoint,
    };
    const badSecret = await runWith(env, 's3://images/golden.raw', ['--cache-dir', join(dir, 'c4')], 'true');
    t.equal(
      badSecret.stderr.trim(),
      'nbd-cow: cannot open base image s3://images/golden.raw: the server answered 403 (SignatureDoesNotMatch)',
    );
    const good = { ...env, AWS_SECRET_ACCESS_KEY: gw.user.secretAccessKey };
    const noKey = await runWith(good, 's3://images/missing.raw', ['--cache-dir', join(dir, 'c4')], 'true');
    t.equal(noKey.stderr.trim(), 'nbd-cow: cannot open base image s3://images/missing.raw: the server answered 404 (NoSuchKey)');
    const anonymous = await runWith(
      { ...cleanEnv(), AWS_ENDPOINT_URL: gw.endpoint },
      's3://images/golden.raw',
      ['--cache-dir', join(dir, 'c4')],
      'true',
    );
    t.equal(
      anonymous.stderr.trim(),
      'nbd-cow: cannot open base image s3://images/golden.raw: the server answered 403 (AccessDenied)',
      'no keys: unsigned, refused',
    );
    const badBucket = await runWith(good, 's3://x/golden.raw', [], 'true');
    t.equal(badBucket.stderr.trim(), 'nbd-cow: remote base s3://x/golden.raw: x is not a valid bucket name');
  });

  t.test('an object replaced in the bucket is another base: its named overlays are refused', async (t) => {
    const env = {
      ...cleanEnv(),
      AWS_ACCESS_KEY_ID: gw.user.accessKeyId,
      AWS_SECRET_ACCESS_KEY: gw.user.secretAccessKey,
      AWS_ENDPOINT_URL: gw.endpoint,
    };
    const other = join(dir, 'other.raw');
    writeFileSync(other, image);
    await gw.putObject('images', 'other.raw', other);
    const args = ['--cache-dir', join(dir, 'cache-replace'), '--overlay-dir', join(dir, 'overlays')];
    const written = await runWith(
      env,
      's3://images/other.raw',
      args,
      `qemu-io -f raw -c 'write -P 0x61 0 64k' "$(echo "$NBD_URI" | sed "s#///other?#///other@vm1?#")"`,
    );
    t.equal(written.code, 0, describeRun(written));
    const replaced = randomBytes(image.length);
    writeFileSync(other, replaced);
    await gw.putObject('images', 'other.raw', other);
    const after = await runWith(
      env,
      's3://images/other.raw',
      args,
      `qemu-img compare -f raw ${other} "$NBD_URI" && ! qemu-io -f raw -c 'read 0 4k' "$(echo "$NBD_URI" | sed "s#///other?#///other@vm1?#")"`,
    );
    t.equal(after.code, 0, `the new object is served; the old overlay is refused (${describeRun(after)})`);
    t.match(after.stderr, /made for another image version or size; starting empty/, 'the old cache goes');
    t.match(after.stderr, /belongs to another base image/);
  });
}
