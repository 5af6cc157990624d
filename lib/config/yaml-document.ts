// YAML text to the root ConfigValue of a configuration: the yaml library's syntax errors, and its
// warnings (an unknown tag such as `!secret`), become ConfigErrors at the library's position, and
// an empty file or one that is not a mapping is refused here. YAML 1.2, the library's default:
// `on`, `off`, `yes` and `no` are text, not booleans, so `mode: on` means "on".
//
// Duplicate keys are left to ConfigValue.mapping(), which names both lines; the library names
// only the second.

import { LineCounter, parseDocument } from 'yaml';
import { ConfigError } from './config-error.js';
import { type ConfigSource, ConfigValue } from './config-value.js';

/** The document in `text` (read from `file`) as a mapping, or a ConfigError saying why not. */
export function parseYamlDocument(text: string, file: string): ConfigValue {
  const lines = new LineCounter();
  const document = parseDocument(text, { lineCounter: lines, prettyErrors: false, uniqueKeys: false });
  const problem = document.errors[0] ?? document.warnings[0];
  if (problem !== undefined) {
    const { line, col } = lines.linePos(problem.pos[0]);
    throw new ConfigError({ file, line, column: col }, `not valid YAML: ${problem.message}`);
  }
  const source: ConfigSource = { file, document, lines };
  const root = new ConfigValue(source, document.contents, '', document.contents?.range[0] ?? 0);
  if (document.contents === null || root.scalar === null) {
    throw new ConfigError({ file }, 'the configuration is empty: it needs at least listen: and exports:');
  }
  return root;
}
