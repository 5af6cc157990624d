// The exports of a running server, built from their configuration (ExportConfig) and rebuilt on
// reload. Each export stands on an ExportBacking (base, overlay directory, named overlays); a
// reload keeps the backing of an export whose base, block size, overlay directory, read-only
// flag, quotas and base-match elision are unchanged, so its open overlays and connections are untouched, and builds
// the policy (description, overlay kinds, allow list, TLS) afresh. Everything new is opened
// before anything is swapped: a reload that fails (a base that does not open) changes nothing.

import { constants as fsConstants } from 'node:fs';
import { access, mkdir } from 'node:fs/promises';
import { sweepEphemeralOverlays } from '../block/ephemeral.js';
import { validateBlockSize } from '../block/overlay-layout.js';
import { spaceLimits } from '../block/space-budget.js';
import type { ExportConfig } from '../config/server-config.js';
import { baseFileName } from '../defaults.js';
import type { Logger } from '../log.js';
import type { RemoteBaseStats } from '../remote/remote-base.js';
import { AccessList } from './access-list.js';
import { ExportBacking } from './export-backing.js';
import { ExportTable, type ExportTableEntry } from './export-table.js';
import { type Export, overlayExportRegistry } from './exports.js';
import { handOverCreatedDirs, type PrivilegeTarget } from './privileges.js';
import type { ServerEvents } from './server-events.js';
import type { TlsMode } from './tls-credentials.js';

export interface ExportsContext {
  readonly log: Logger;
  readonly events: ServerEvents;
  /** The server's TLS mode: exports that need TLS are refused at start (or reload) without it. */
  readonly tlsMode: TlsMode;
  /** Overlay directory of an export that names none. */
  readonly defaultOverlayDir: string;
  /** Who the server will become: the overlay directories it creates at start are handed over. */
  readonly privilegeTarget: PrivilegeTarget | null;
  /** A worker's: whether a pid is a sibling worker, to which a named overlay's connections move (hand-over.ts). */
  readonly siblingWorker?: (pid: number) => boolean;
}

/** What a reload changed, by export name. */
export interface ReloadSummary {
  readonly added: readonly string[];
  readonly removed: readonly string[];
  readonly changed: readonly string[];
}

/** The fields that make a backing: any change to one means a new backing (and base open). */
function backingKey(config: ExportConfig, overlayDir: string): string {
  return JSON.stringify([
    config.name,
    config.base,
    config.layers ?? [],
    config.blockSize,
    config.readOnly,
    overlayDir,
    config.maxOverlaySize,
    config.maxOverlayDirSize,
    config.elideBaseMatches ?? false,
    config.remote ?? {},
  ]);
}

export class ConfiguredExports {
  readonly table: ExportTable;
  readonly #context: ExportsContext;
  /** By backingKey, the backings the current table uses. */
  #backings: Map<string, ExportBacking>;
  #configs: readonly ExportConfig[];
  /** Backings a reload replaced that still have connections. */
  readonly #retired = new Set<ExportBacking>();
  #overlayNumber = 0;
  /** Overlay directories already made and swept by this process. */
  readonly #preparedDirs = new Set<string>();

  private constructor(context: ExportsContext) {
    this.#context = context;
    this.table = new ExportTable([]);
    this.#backings = new Map();
    this.#configs = [];
  }

  /** Check and open every export; on any error, what was opened is closed again. */
  static async open(configs: readonly ExportConfig[], context: ExportsContext): Promise<ConfiguredExports> {
    const exports = new ConfiguredExports(context);
    await exports.reload(configs);
    return exports;
  }

  /** The current configuration of each export. */
  get configs(): readonly ExportConfig[] {
    return this.#configs;
  }

  /** The overlay directory `config` uses. */
  overlayDirOf(config: ExportConfig): string {
    return config.overlayDir ?? this.#context.defaultOverlayDir;
  }

  /**
   * Serve `configs` from now on. New backings are opened first; if one fails, they are closed
   * and the error is thrown with the current exports untouched. Backings no export uses any
   * more close when their last connection does.
   */
  async reload(configs: readonly ExportConfig[]): Promise<ReloadSummary> {
    if (configs.length === 0) throw new Error('no export is configured');
    for (const config of configs) {
      validateBlockSize(config.blockSize);
      this.#checkTls(config);
    }
    const next = new Map<string, ExportBacking>();
    const opened: ExportBacking[] = [];
    const entries: ExportTableEntry[] = [];
    try {
      for (const config of configs) {
        const overlayDir = this.overlayDirOf(config);
        const key = backingKey(config, overlayDir);
        let backing = next.get(key) ?? this.#backings.get(key);
        if (backing === undefined) {
          if (!config.readOnly) await this.#prepareOverlayDir(overlayDir);
          backing = await this.#openBacking(config, overlayDir);
          opened.push(backing);
        }
        next.set(key, backing);
        entries.push(this.#entry(config, backing));
      }
      this.table.replace(entries);
    } catch (err) {
      await Promise.allSettled(opened.map((b) => b.close()));
      throw err;
    }
    const summary = summarize(this.#configs, configs);
    const previous = this.#backings;
    this.#backings = next;
    this.#configs = configs;
    const kept = new Set(next.values());
    for (const backing of previous.values()) {
      if (kept.has(backing)) continue;
      this.#retired.add(backing);
      // Resolves once its last connection has closed and the backing with it.
      void backing.retire().then(() => this.#retired.delete(backing));
    }
    return summary;
  }

  /** The current exports whose base is remote, with its fetch and cache counters (metrics.ts). */
  remoteBases(): Array<{ readonly exportName: string; readonly stats: RemoteBaseStats }> {
    return [...this.#backings.values()].flatMap((backing) =>
      backing.remote === undefined ? [] : [{ exportName: backing.options.exportName, stats: backing.remote.stats }],
    );
  }

  /** Close every backing, current and retired (server stop, after the connections). */
  async close(): Promise<void> {
    await Promise.allSettled([...this.#backings.values(), ...this.#retired].map((b) => b.close()));
  }

  #checkTls(config: ExportConfig): void {
    if (this.#context.tlsMode !== 'off') return;
    if (config.namedOverlayOwner === 'tls-identity') {
      throw new Error(
        `export ${config.name}: named overlays owned by the TLS identity need TLS: add --tls require (or on) with credentials`,
      );
    }
    if (config.requireTls) throw new Error(`export ${config.name} requires TLS, but TLS is off`);
  }

  async #openBacking(config: ExportConfig, overlayDir: string): Promise<ExportBacking> {
    const { log, events } = this.#context;
    return ExportBacking.open({
      exportName: config.name,
      basePath: config.base,
      layers: config.layers ?? [],
      blockSize: config.blockSize,
      readOnly: config.readOnly,
      overlayDir,
      space: spaceLimits(config.maxOverlaySize, config.maxOverlayDirSize),
      elideBaseMatches: config.elideBaseMatches ?? false,
      events,
      warn: (message) => log.warn(message),
      info: (message) => log.info(message),
      ...(config.remote !== undefined ? { remote: config.remote } : {}),
      ...(this.#context.siblingWorker !== undefined ? { siblingWorker: this.#context.siblingWorker } : {}),
      nextOverlayNumber: () => ++this.#overlayNumber,
    });
  }

  #entry(config: ExportConfig, backing: ExportBacking): ExportTableEntry {
    const plain: Export = {
      name: config.name,
      description:
        config.description ??
        (config.readOnly
          ? `${baseFileName(config.base)}, read-only`
          : `${baseFileName(config.base)} with a private copy-on-write overlay`),
      size: backing.base.size,
      readOnly: config.readOnly,
      preferredBlockSize: config.blockSize,
      openDevice: () => backing.openPlain(),
    };
    const registry = overlayExportRegistry({
      plain,
      policy: config.overlays,
      namedOwner: config.namedOverlayOwner,
      ...(config.readOnly ? {} : { attachNamed: (overlayName: string) => backing.openNamed(overlayName) }),
    });
    return {
      plain,
      registry,
      allow: config.allow === undefined ? undefined : new AccessList(config.allow),
      requireTls: config.requireTls,
    };
  }

  /** Make `dir` (what start-up creates belongs to the user the server will become) and sweep it once. */
  async #prepareOverlayDir(dir: string): Promise<void> {
    if (this.#preparedDirs.has(dir)) return;
    try {
      const firstCreated = await mkdir(dir, { recursive: true, mode: 0o700 });
      const target = this.#context.privilegeTarget;
      if (target !== null) await handOverCreatedDirs(dir, firstCreated, target);
      await access(dir, fsConstants.W_OK | fsConstants.X_OK);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? '';
      throw Object.assign(new Error(`overlay directory ${dir} is not usable: ${code || String(err)}`), { code });
    }
    const removed = await sweepEphemeralOverlays(dir);
    if (removed > 0) this.#context.log.info(`removed ${removed} overlay file(s) left by a server that is gone`);
    this.#preparedDirs.add(dir);
  }
}

function summarize(before: readonly ExportConfig[], after: readonly ExportConfig[]): ReloadSummary {
  const old = new Map(before.map((c) => [c.name, JSON.stringify(c)]));
  const now = new Set(after.map((c) => c.name));
  return {
    added: after.filter((c) => !old.has(c.name)).map((c) => c.name),
    removed: before.filter((c) => !now.has(c.name)).map((c) => c.name),
    changed: after.filter((c) => old.has(c.name) && old.get(c.name) !== JSON.stringify(c)).map((c) => c.name),
  };
}
