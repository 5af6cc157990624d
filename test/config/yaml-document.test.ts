import t from 'tap';
import { ConfigError } from '../../lib/config/config-error.js';
import { parseYamlDocument } from '../../lib/config/yaml-document.js';
import { CONFIG_FILE, yaml } from '../helpers/config-text.js';

/** The message parseYamlDocument throws for `text`. */
function failure(text: string): string {
  try {
    parseYamlDocument(text, CONFIG_FILE);
  } catch (err) {
    if (err instanceof ConfigError) return err.message;
    throw err;
  }
  throw new Error('no error');
}

t.test('a syntax error names the line and column the yaml library gives', async (t) => {
  const text = yaml`
    listen:
      - tcp: 127.0.0.1:10809
    exports: [unclosed
  `;
  t.equal(
    failure(text),
    `${CONFIG_FILE}:4:1: not valid YAML: Flow sequence in block collection must be sufficiently indented and end with a ]`,
  );
  t.equal(failure('listen: a: b\n'), `${CONFIG_FILE}:1:9: not valid YAML: Nested mappings are not allowed in compact mappings`);
  t.equal(failure('a: 1\n\tb: 2\n'), `${CONFIG_FILE}:2:1: not valid YAML: Tabs are not allowed as indentation`);
});

t.test('a second document is refused', async (t) => {
  t.equal(
    failure('listen: []\n---\nexports: {}\n'),
    `${CONFIG_FILE}:2:1: not valid YAML: Source contains multiple documents; please use YAML.parseAllDocuments()`,
  );
});

t.test('a tag the core schema does not know is refused, not ignored', async (t) => {
  t.equal(failure('user: !vault nbd\n'), `${CONFIG_FILE}:1:7: not valid YAML: Unresolved tag: !vault`);
});

t.test('an empty file, or one with comments only, has no line to name', async (t) => {
  const empty = `${CONFIG_FILE}: the configuration is empty: it needs at least listen: and exports:`;
  t.equal(failure(''), empty);
  t.equal(failure('# nothing yet\n\n'), empty);
  t.equal(failure('~\n'), empty, 'an explicit null');
});

t.test('a document is returned as its root value, at its first line', async (t) => {
  const root = parseYamlDocument('\n\n# comment\nlisten: []\n', CONFIG_FILE);
  t.equal(root.path, '');
  t.equal(root.line, 4);
  t.equal(root.describe(), 'a mapping');
});

t.test('YAML 1.2: on, off, yes and no are text', async (t) => {
  const root = parseYamlDocument('a: on\nb: off\nc: yes\nd: no\ne: true\n', CONFIG_FILE).mapping();
  t.strictSame(
    ['a', 'b', 'c', 'd', 'e'].map((key) => root.get(key)?.scalar),
    ['on', 'off', 'yes', 'no', true],
  );
});
