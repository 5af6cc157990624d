import { homedir } from 'node:os';
import { join } from 'node:path';
import t from 'tap';
import { defaultCacheDir } from '../../lib/remote/remote-options.js';

t.test('the default cache directory', async (t) => {
  t.equal(defaultCacheDir({ CACHE_DIRECTORY: '/var/cache/nbd-cow:/var/cache/other' }), '/var/cache/nbd-cow', "systemd's first");
  t.equal(defaultCacheDir({ XDG_CACHE_HOME: '/home/a/.c' }), '/home/a/.c/nbd-cow');
  t.equal(
    defaultCacheDir({ XDG_CACHE_HOME: 'relative' }),
    join(homedir(), '.cache', 'nbd-cow'),
    'a relative XDG path is ignored, as the spec says',
  );
  t.equal(defaultCacheDir({ CACHE_DIRECTORY: '' }), join(homedir(), '.cache', 'nbd-cow'));
});
