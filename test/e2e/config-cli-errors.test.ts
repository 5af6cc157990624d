// `serve --config` refusals from the real CLI: exit 1 and one line on stderr naming the file,
// the line and the key, before anything listens; a base or a listener flag beside --config.

import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import t from 'tap';
import { runCli } from '../helpers/server-process.js';

t.test('a bad configuration file is one line naming file, line and key', async (t) => {
  const dir = t.testdir();
  const config = join(dir, 'lab.yaml');
  writeFileSync(
    config,
    ['listen:', '  - tcp: 127.0.0.1:0', 'exports:', '  debian:', '    base: d.img', '    block-size: 3000', ''].join('\n'),
  );
  const r = await runCli(['serve', '--config', config]);
  t.equal(r.code, 1, 'exit 1');
  t.equal(r.stdout, '', 'no URI');
  t.match(r.stderr, /^nbd-cow: .*lab\.yaml:6:5: exports\.debian\.block-size: 3000 is not a power of two/);
  t.equal(r.stderr.trim().split('\n').length, 1, 'one line');

  const missing = await runCli(['serve', '--config', join(dir, 'nope.yaml')]);
  t.equal(missing.code, 1);
  t.match(missing.stderr, /nope\.yaml/, 'a missing file is named');
});

t.test('--config takes no base and no listener or export flags', async (t) => {
  const dir = t.testdir();
  const config = join(dir, 'lab.yaml');
  writeFileSync(config, 'listen:\n  - tcp: 127.0.0.1:0\nexports:\n  debian:\n    base: d.img\n');
  const withBase = await runCli(['serve', 'd.img', '--config', config]);
  t.equal(withBase.code, 1);
  t.match(withBase.stderr, /a base image cannot be given with --config/);
  const withPort = await runCli(['serve', '--config', config, '-p', '0']);
  t.equal(withPort.code, 1);
  t.match(withPort.stderr, /--port cannot be used with --config: set it in the file/);
  const withOverlays = await runCli(['serve', '--config', config, '--overlays', 'named']);
  t.match(withOverlays.stderr, /--overlays cannot be used with --config/);
});
