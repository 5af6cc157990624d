// Configuration files for tests: the `yaml` tag strips a template literal's common indentation,
// so a test shows the file as an operator writes it (line 1 is the line after the backtick), and
// configError() returns the ConfigError parseConfig throws for a text.

import { ConfigError } from '../../lib/config/config-error.js';
import { parseConfig } from '../../lib/config/config-file.js';

/** Where test texts claim to come from: errors name it, relative paths resolve against /etc/nbd-cow. */
export const CONFIG_FILE = '/etc/nbd-cow/lab.yaml';

/** The smallest valid configuration's lines, to build on: one listener, one export. */
export const MINIMAL = yaml`
  listen:
    - tcp: 127.0.0.1:10809
  exports:
    golden:
      base: golden.img
`;

/** The text with its first newline and its lines' common indentation removed. */
export function yaml(strings: TemplateStringsArray, ...values: unknown[]): string {
  const text = strings.reduce((all, part, i) => all + part + (i < values.length ? String(values[i]) : ''), '');
  const lines = text.replace(/^\n/, '').split('\n');
  const indents = lines.filter((line) => line.trim() !== '').map((line) => /^ */.exec(line)?.[0].length ?? 0);
  const common = Math.min(...indents);
  return lines.map((line) => line.slice(common)).join('\n');
}

/** The ConfigError parseConfig throws for `text`; an Error if it throws none or another kind. */
export function configError(text: string, file = CONFIG_FILE): ConfigError {
  try {
    parseConfig(text, file);
  } catch (err) {
    if (err instanceof ConfigError) return err;
    throw err;
  }
  throw new Error(`no error for:\n${text}`);
}
