import t from 'tap';
import { baseFileName, defaultExportName } from '../../lib/defaults.js';
import { isRemoteBase, parseRemoteUrl, shownUrl } from '../../lib/remote/remote-url.js';

t.test('which bases are URLs', async (t) => {
  t.ok(isRemoteBase('http://h/x.raw'));
  t.ok(isRemoteBase('HTTPS://h/x.raw'));
  t.notOk(isRemoteBase('/srv/http://x'));
  t.notOk(isRemoteBase('ftp://h/x.raw'));
  t.notOk(isRemoteBase('golden.img'));
});

t.test('parsed, or refused with one line', async (t) => {
  t.equal(
    parseRemoteUrl('http://u:p@h:8080/a/b.raw?v=1#frag').href,
    'http://u:p@h:8080/a/b.raw?v=1',
    'the fragment is never sent',
  );
  t.throws(() => parseRemoteUrl('http://'), { code: 'EINVAL', message: 'remote base http:// is not a valid URL' });
  t.throws(() => parseRemoteUrl('http://h/'), { code: 'EINVAL', message: /names a directory/ });
  t.throws(() => parseRemoteUrl('http://h/images/'), { code: 'EINVAL', message: /names a directory/ });
});

t.test('shown without user and password', async (t) => {
  t.equal(shownUrl('https://alice:s3cret@h/x.raw'), 'https://h/x.raw');
  t.equal(shownUrl(new URL('https://alice@h/x.raw?a=b')), 'https://h/x.raw?a=b');
  t.equal(shownUrl('http://alice:s3cret@[bad/x'), 'http://[bad/x', 'even when it does not parse');
  t.equal(shownUrl('http://h/x.raw'), 'http://h/x.raw');
});

t.test('the export name and description come from the URL path', async (t) => {
  t.equal(baseFileName('https://u:p@h/a/golden%20v2.raw?sig=abc'), 'golden v2.raw', 'no query, no credentials');
  t.equal(defaultExportName('https://h/a/golden.raw?sig=abc'), 'golden');
  t.equal(defaultExportName('/srv/debian.img'), 'debian');
});
