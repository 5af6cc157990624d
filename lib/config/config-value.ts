// One value of a parsed configuration file with the key path that leads to it and the place in
// the file it came from, and typed readers that fail with a ConfigError naming both. The rest of
// lib/config/ reads the document only through these, so every error has a line and a key path,
// and only this file (and yaml-document.ts) knows the yaml library's node types.
//
// Where an error points: at the key for a value under a key (`block-size:` on line 14, as an
// editor would jump to it), at the item for a list item, and at the mapping's own key for a key
// that is missing from it.

import { type Document, isAlias, isMap, isScalar, isSeq, type LineCounter, type Node, type Pair } from 'yaml';
import { closestKey } from './closest-key.js';
import { ConfigError } from './config-error.js';

/** The parsed file, for turning an offset into a line and column. */
export interface ConfigSource {
  readonly file: string;
  readonly document: Document;
  readonly lines: LineCounter;
}

/** The longest quoted value a message repeats. */
const MAX_QUOTED = 60;

export class ConfigValue {
  readonly #source: ConfigSource;
  readonly #node: Node | null;
  /** The key path: `exports.debian.block-size`, `listen[0]`; '' for the whole document. */
  readonly path: string;
  /** Offset in the file that errors point at. */
  readonly offset: number;

  constructor(source: ConfigSource, node: Node | null, path: string, offset: number) {
    this.#source = source;
    // An alias (`*lab-nets`) stands for the node its anchor names; errors still point here.
    this.#node = isAlias(node) ? (node.resolve(source.document) ?? null) : node;
    this.path = path;
    this.offset = offset;
  }

  /** The line (1-based) this value's errors point at, for messages about another value. */
  get line(): number {
    return this.#source.lines.linePos(this.offset).line;
  }

  /** Throw a ConfigError at this value: `FILE:LINE:COL: PATH: reason`. */
  fail(reason: string, path = this.path): never {
    const { line, col } = this.#source.lines.linePos(this.offset);
    const keyPath = path === '' ? {} : { keyPath: path };
    throw new ConfigError({ file: this.#source.file, line, column: col, ...keyPath }, reason);
  }

  /** What the value is, for "expected X, not Y": `the text "10s"`, `the number 3`, `a list`. */
  describe(): string {
    const node = this.#node;
    if (isMap(node)) return 'a mapping';
    if (isSeq(node)) return 'a list';
    if (!isScalar(node) || node.value === null) return 'an empty value';
    const { value } = node;
    if (typeof value === 'string') return `the text ${quote(value)}`;
    if (typeof value === 'boolean') return String(value);
    // The core schema's scalars are text, booleans, numbers and null: this is a number.
    return `the number ${node.source ?? String(value)}`;
  }

  /** The scalar's value (a string, number, boolean or null), or undefined for a list or mapping. */
  get scalar(): unknown {
    return isScalar(this.#node) ? this.#node.value : this.#node === null ? null : undefined;
  }

  /** A plain (unquoted) scalar's text exactly as written, e.g. `0660` where the value is 660. */
  get plainSource(): string | undefined {
    const node = this.#node;
    return isScalar(node) && node.type === 'PLAIN' ? node.source : undefined;
  }

  string(expected = 'text'): string {
    const value = this.scalar;
    if (typeof value !== 'string') this.fail(`expected ${expected}, not ${this.describe()}`);
    return value;
  }

  /** A string with at least one character. */
  nonEmptyString(expected = 'text'): string {
    const value = this.string(expected);
    if (value === '') this.fail(`expected ${expected}, not an empty string`);
    return value;
  }

  boolean(): boolean {
    const value = this.scalar;
    if (typeof value !== 'boolean') this.fail(`expected true or false, not ${this.describe()}`);
    return value;
  }

  /** A finite number (written as a number, not quoted). */
  number(expected = 'a number'): number {
    const value = this.scalar;
    if (typeof value !== 'number' || !Number.isFinite(value)) this.fail(`expected ${expected}, not ${this.describe()}`);
    return value;
  }

  /** One of `choices`, e.g. the log level. */
  oneOf<T extends string>(choices: readonly T[]): T {
    const value = this.scalar;
    const found = choices.find((choice) => choice === value);
    if (found === undefined) this.fail(`expected ${listChoices(choices)}, not ${this.describe()}`);
    return found;
  }

  /** The items of a list, each with its path (`allow[2]`) and place. */
  list(expected = 'a list'): ConfigValue[] {
    const node = this.#node;
    if (!isSeq(node)) this.fail(`expected ${expected}, not ${this.describe()}`);
    return node.items.map(
      (item, i) => new ConfigValue(this.#source, asNode(item), `${this.path}[${i}]`, offsetOf(item) ?? this.offset),
    );
  }

  /**
   * A mapping: each key once, and (with `known`) only keys from `known`, else an error naming
   * the key, with a hint at the known key it resembles.
   */
  mapping(known?: readonly string[], expected = 'a mapping'): ConfigMapping {
    const node = this.#node;
    if (!isMap(node)) this.fail(`expected ${expected}, not ${this.describe()}`);
    const entries = new Map<string, ConfigValue>();
    for (const pair of node.items) {
      const [key, entry] = this.#entry(pair);
      const earlier = entries.get(key);
      if (earlier !== undefined) entry.fail(`defined twice, on line ${earlier.line} and on line ${entry.line}`);
      if (known !== undefined && !known.includes(key)) entry.fail(unknownKey(key, known));
      entries.set(key, entry);
    }
    return new ConfigMapping(this, entries);
  }

  /** One key: value pair: the key, and the value with the key's path and place. */
  #entry(pair: Pair<unknown, unknown>): [string, ConfigValue] {
    const keyNode = asNode(pair.key);
    const at = offsetOf(keyNode) ?? offsetOf(pair.value) ?? this.offset;
    if (!isScalar(keyNode) || keyNode.value === null) {
      const keyed = new ConfigValue(this.#source, keyNode, this.path, at);
      return keyed.fail(`expected a key such as name:, not ${keyed.describe()} as a key`);
    }
    // A key that YAML reads as a number (`24.04:`) keeps its text: it is a name, not a number.
    const key = typeof keyNode.value === 'string' ? keyNode.value : (keyNode.source ?? String(keyNode.value));
    return [key, new ConfigValue(this.#source, asNode(pair.value), joinKey(this.path, key), at)];
  }
}

/** A mapping's entries by key, in the file's order. */
export class ConfigMapping {
  readonly #owner: ConfigValue;
  readonly #entries: ReadonlyMap<string, ConfigValue>;

  constructor(owner: ConfigValue, entries: ReadonlyMap<string, ConfigValue>) {
    this.#owner = owner;
    this.#entries = entries;
  }

  get size(): number {
    return this.#entries.size;
  }

  get(key: string): ConfigValue | undefined {
    return this.#entries.get(key);
  }

  /** The value of `key`, or an error at the mapping: `PATH.KEY: missing (what)`. */
  require(key: string, what: string): ConfigValue {
    return this.#entries.get(key) ?? this.#owner.fail(`missing (${what})`, joinKey(this.#owner.path, key));
  }

  /** Each key and its value, in the file's order. */
  entries(): IterableIterator<[string, ConfigValue]> {
    return this.#entries.entries();
  }

  /** `reader(value)` when `key` is present, else `fallback`. */
  read<T>(key: string, reader: (value: ConfigValue) => T, fallback: T): T {
    const value = this.#entries.get(key);
    return value === undefined ? fallback : reader(value);
  }

  /** `reader(value)` when `key` is present, as `{ [name]: result }`, to spread into a config object. */
  optional<K extends string, T>(key: string, name: K, reader: (value: ConfigValue) => T): { [P in K]?: T } {
    const value = this.#entries.get(key);
    return (value === undefined ? {} : { [name]: reader(value) }) as { [P in K]?: T };
  }
}

/** `exports` + `debian` → `exports.debian`; a key that is not a plain word is quoted: `exports["my disk"]`. */
export function joinKey(path: string, key: string): string {
  if (!/^[A-Za-z0-9_][A-Za-z0-9._-]*$/.test(key)) return `${path}[${JSON.stringify(key)}]`;
  return path === '' ? key : `${path}.${key}`;
}

function unknownKey(key: string, known: readonly string[]): string {
  const hint = closestKey(key, known);
  if (hint !== undefined) return `unknown key ${quote(key)} (did you mean ${quote(hint)}?)`;
  return `unknown key ${quote(key)}; the keys here are ${known.join(', ')}`;
}

/** `"a", "b" or "c"`. */
export function listChoices(choices: readonly string[]): string {
  const quoted = choices.map((choice) => quote(choice));
  return quoted.length < 2 ? (quoted[0] ?? 'nothing') : `${quoted.slice(0, -1).join(', ')} or ${quoted.at(-1)}`;
}

/** A value in a message: JSON-quoted, cut short if long. */
export function quote(text: string): string {
  return JSON.stringify(text.length > MAX_QUOTED ? `${text.slice(0, MAX_QUOTED)}…` : text);
}

function asNode(value: unknown): Node | null {
  return value === null || value === undefined ? null : (value as Node);
}

function offsetOf(value: unknown): number | undefined {
  return (value as Node | null | undefined)?.range?.[0];
}
