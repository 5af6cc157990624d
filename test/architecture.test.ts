// The layering STYLE.md sets, checked on every run: lib/protocol/ is a pure codec (no file,
// socket, timer or process access), lib/block/ knows nothing of sockets, the server or the
// wire format, and nothing in lib/ reaches into test/ or bench/. Each file is parsed with the
// TypeScript compiler, so comments and strings cannot hide or fake an import.

import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import t from 'tap';
import ts from 'typescript';
import { ROOT } from './helpers/processes.js';

interface Rule {
  /** Folder (from the root) whose .ts files the rule covers. */
  readonly folder: string;
  /** Module specifiers (`node:fs`) or folders (from the root, `lib/server`) it must not import. */
  readonly forbiddenImports: readonly string[];
  /** Global names it must not use (`process`, `setTimeout`). */
  readonly forbiddenGlobals: readonly string[];
  readonly why: string;
}

const IO_MODULES = [
  'fs',
  'fs/promises',
  'net',
  'tls',
  'dgram',
  'http',
  'https',
  'http2',
  'child_process',
  'cluster',
  'worker_threads',
  'timers',
  'timers/promises',
  'process',
  'os',
  'readline',
].flatMap((name) => [`node:${name}`, name]);

const RULES: readonly Rule[] = [
  {
    folder: 'lib/protocol',
    forbiddenImports: [...IO_MODULES, 'lib/server', 'lib/block', 'lib/log.ts'],
    forbiddenGlobals: ['process', 'setTimeout', 'setInterval', 'setImmediate', 'require', 'fetch'],
    why: 'the wire format is pure: buffers in, values out, no I/O',
  },
  {
    folder: 'lib/block',
    forbiddenImports: ['node:net', 'net', 'node:tls', 'tls', 'node:dgram', 'dgram', 'lib/server', 'lib/protocol', 'lib/remote'],
    forbiddenGlobals: [],
    why: 'the block layer knows nothing of sockets, the server or NBD, nor of remote bases (they are given to it)',
  },
  {
    folder: 'lib',
    forbiddenImports: ['test', 'bench', 'bin'],
    forbiddenGlobals: [],
    why: 'the library stands alone',
  },
  {
    folder: 'lib/remote',
    forbiddenImports: ['lib/server', 'lib/protocol', 'lib/config'],
    forbiddenGlobals: [],
    why: 'a remote base is a block device fetched over HTTP: it knows nothing of NBD or the server',
  },
];

interface Violation {
  readonly line: number;
  readonly what: string;
}

/** Import specifiers of a source text: static, `export … from`, dynamic `import()` and `require()`. */
function importsOf(source: ts.SourceFile): Array<{ specifier: string; line: number }> {
  const found: Array<{ specifier: string; line: number }> = [];
  const add = (node: ts.Node, literal: ts.Expression | undefined): void => {
    if (literal !== undefined && ts.isStringLiteralLike(literal)) {
      found.push({ specifier: literal.text, line: source.getLineAndCharacterOfPosition(node.getStart(source)).line + 1 });
    }
  };
  const visit = (node: ts.Node): void => {
    if (ts.isImportDeclaration(node) || ts.isExportDeclaration(node)) add(node, node.moduleSpecifier);
    else if (ts.isImportEqualsDeclaration(node) && ts.isExternalModuleReference(node.moduleReference)) {
      add(node, node.moduleReference.expression);
    } else if (
      ts.isCallExpression(node) &&
      (node.expression.kind === ts.SyntaxKind.ImportKeyword ||
        (ts.isIdentifier(node.expression) && node.expression.text === 'require'))
    ) {
      add(node, node.arguments[0]);
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
  return found;
}

/** Uses of the global `names` as values: not `x.name`, not `{ name: … }`, not a declaration. */
function globalsUsed(source: ts.SourceFile, names: readonly string[]): Array<{ name: string; line: number }> {
  const found: Array<{ name: string; line: number }> = [];
  if (names.length === 0) return found;
  const visit = (node: ts.Node): void => {
    if (ts.isIdentifier(node) && names.includes(node.text)) {
      const parent = node.parent;
      const isMemberName =
        (ts.isPropertyAccessExpression(parent) && parent.name === node) ||
        (ts.isPropertyAssignment(parent) && parent.name === node) ||
        ((ts.isMethodDeclaration(parent) || ts.isPropertyDeclaration(parent) || ts.isPropertySignature(parent)) &&
          parent.name === node);
      const isDeclaration =
        (ts.isVariableDeclaration(parent) || ts.isParameter(parent) || ts.isFunctionDeclaration(parent)) && parent.name === node;
      if (!isMemberName && !isDeclaration) {
        found.push({ name: node.text, line: source.getLineAndCharacterOfPosition(node.getStart(source)).line + 1 });
      }
    }
    ts.forEachChild(node, visit);
  };
  visit(source);
  return found;
}

/** Where a relative specifier in `file` (a path from the root) points, as a path from the root. */
function resolvedFromRoot(file: string, specifier: string): string {
  return relative(ROOT, resolve(ROOT, dirname(file), specifier)).replace(/\.js$/, '.ts');
}

function isInside(path: string, folderOrFile: string): boolean {
  return path === folderOrFile || path.startsWith(`${folderOrFile}/`);
}

/** What `rule` finds wrong in the source `text` of `file` (a path from the root). */
function checkSource(rule: Rule, file: string, text: string): Violation[] {
  const source = ts.createSourceFile(file, text, ts.ScriptTarget.ES2022, true, ts.ScriptKind.TS);
  const out: Violation[] = [];
  for (const { specifier, line } of importsOf(source)) {
    const target = specifier.startsWith('.') ? resolvedFromRoot(file, specifier) : specifier;
    const bad = rule.forbiddenImports.find((forbidden) =>
      specifier.startsWith('.') ? isInside(target, forbidden) : target === forbidden,
    );
    if (bad !== undefined) out.push({ line, what: `imports '${specifier}' (${bad})` });
  }
  for (const { name, line } of globalsUsed(source, rule.forbiddenGlobals)) out.push({ line, what: `uses ${name}` });
  return out;
}

function tsFilesUnder(folder: string): string[] {
  return readdirSync(join(ROOT, folder), { recursive: true, encoding: 'utf8' })
    .filter((name) => name.endsWith('.ts'))
    .map((name) => join(folder, name))
    .sort();
}

t.test('the checker catches what it is for', async (t) => {
  const [protocol, block, lib] = RULES as [Rule, Rule, Rule];
  const lines = (v: Violation[]) => v.map((x) => `${x.line}: ${x.what}`);
  t.same(
    lines(
      checkSource(
        protocol,
        'lib/protocol/x.ts',
        [
          "import { readFileSync } from 'node:fs';",
          "import type { Socket } from 'node:net';",
          "export { a } from '../server/connection.js';",
          'const later = setTimeout(() => undefined, 1);',
          "const env = process.env['X'];",
          "const m = await import('node:timers/promises');",
        ].join('\n'),
      ),
    ),
    [
      "1: imports 'node:fs' (node:fs)",
      "2: imports 'node:net' (node:net)",
      "3: imports '../server/connection.js' (lib/server)",
      "6: imports 'node:timers/promises' (node:timers/promises)",
      '4: uses setTimeout',
      '5: uses process',
    ],
    'imports of I/O and of other layers, timers and process are reported with their lines',
  );
  t.same(
    checkSource(
      protocol,
      'lib/protocol/x.ts',
      [
        "import { NBD_OPT_GO } from './constants.js';",
        '// process and setTimeout in a comment',
        "const s = 'node:fs';",
        'const o = { process: 1, setTimeout: 2 };',
        'o.process = 3;',
        'function f(setTimeout: number) {}',
      ].join('\n'),
    ),
    [],
    'comments, strings, member names and own declarations are not uses',
  );
  t.same(lines(checkSource(block, 'lib/block/x.ts', "import { encodeReply } from '../protocol/transmission.js';")), [
    "1: imports '../protocol/transmission.js' (lib/protocol)",
  ]);
  t.same(lines(checkSource(block, 'lib/block/x.ts', "import { connect } from 'node:net';")), [
    "1: imports 'node:net' (node:net)",
  ]);
  t.same(checkSource(block, 'lib/block/x.ts', "import fs from 'node:fs';\nimport { codedError } from './coded-error.js';"), []);
  t.same(lines(checkSource(lib, 'lib/server/x.ts', "import { RawClient } from '../../test/helpers/raw-nbd/client.js';")), [
    "1: imports '../../test/helpers/raw-nbd/client.js' (test)",
  ]);
});

for (const rule of RULES) {
  t.test(`${rule.folder}/: ${rule.why}`, async (t) => {
    const files = tsFilesUnder(rule.folder);
    t.ok(files.length > 0, `${files.length} files checked`);
    for (const file of files) {
      const violations = checkSource(rule, file, readFileSync(join(ROOT, file), 'utf8'));
      t.same(
        violations.map((v) => `${file}:${v.line}: ${v.what}`),
        [],
        file,
      );
    }
  });
}

/**
 * The modules loading `entries` (paths from the root) loads with them: their static imports and
 * `export … from`, followed through our own files, but not `import type` or `export type`
 * (erased) nor `import()` (loaded when it runs). Our files as paths, packages by name.
 */
function loadedWith(entries: readonly string[]): Set<string> {
  const seen = new Set<string>();
  const pending = [...entries];
  for (let file = pending.pop(); file !== undefined; file = pending.pop()) {
    if (seen.has(file)) continue;
    seen.add(file);
    const source = ts.createSourceFile(file, readFileSync(join(ROOT, file), 'utf8'), ts.ScriptTarget.ES2022, true);
    for (const statement of source.statements) {
      const specifier =
        (ts.isImportDeclaration(statement) && statement.importClause?.isTypeOnly !== true) ||
        (ts.isExportDeclaration(statement) && !statement.isTypeOnly)
          ? statement.moduleSpecifier
          : undefined;
      if (specifier === undefined || !ts.isStringLiteral(specifier) || specifier.text.startsWith('node:')) continue;
      if (specifier.text.startsWith('.')) pending.push(resolvedFromRoot(file, specifier.text));
      else seen.add(specifier.text.split('/')[0] as string);
    }
  }
  return seen;
}

t.test('a server without --config or --metrics loads neither the YAML parser nor the Prometheus client', async (t) => {
  const serve = loadedWith(['bin/nbd-cow.ts', 'bin/serve-command.ts']);
  t.ok(serve.has('pino') && serve.has('lib/start-server.ts'), 'the walk follows our imports to the packages they load');
  for (const lazy of ['yaml', 'prom-client', 'cli-progress']) t.notOk(serve.has(lazy), `${lazy} is loaded only when used`);
  t.ok(loadedWith(['lib/config/config-file.ts']).has('yaml'), 'the configuration file does load it');
  t.ok(loadedWith(['lib/server/metrics.ts']).has('prom-client'), 'the metrics do load it');
});
