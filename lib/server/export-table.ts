// The exports a server offers, by name, as the negotiation sees them (an ExportRegistry). Each
// entry is one configured export: its own registry answers `EXPORT` and `EXPORT@NAME`, and the
// table adds what an export may ask of the client before either: TLS, and a TCP address in its
// allow list. replace() swaps every entry at once (a reload): a lookup sees the old table or
// the new one, never a mix, and connections already past GO keep the export they got.

import { splitNamedExport } from '../block/overlay-names.js';
import { NBD_REP_ERR_POLICY, NBD_REP_ERR_TLS_REQD } from '../protocol/constants.js';
import { OptionError } from '../protocol/errors.js';
import type { AccessList } from './access-list.js';
import { type ClientIdentity, type Export, type ExportRegistry, quoteName } from './exports.js';

export interface ExportTableEntry {
  /** The export reached by its plain name, as NBD_OPT_LIST shows it. */
  readonly plain: Export;
  /** Answers the plain name and `NAME@OVERLAY` (overlay policy, named-overlay ownership). */
  readonly registry: ExportRegistry;
  /** TCP clients outside it are refused (NBD_REP_ERR_POLICY); unix-socket clients are not checked. */
  readonly allow?: AccessList | undefined;
  /** Clients without TLS are refused (NBD_REP_ERR_TLS_REQD). */
  readonly requireTls: boolean;
}

export class ExportTable implements ExportRegistry {
  #entries = new Map<string, ExportTableEntry>();
  #default: ExportTableEntry | undefined;
  #exports: readonly Export[] = [];

  constructor(entries: readonly ExportTableEntry[]) {
    this.replace(entries);
  }

  /** Serve `entries` from now on; the first is the default export (the empty name). */
  replace(entries: readonly ExportTableEntry[]): void {
    const byName = new Map<string, ExportTableEntry>();
    for (const entry of entries) {
      if (byName.has(entry.plain.name)) throw new Error(`export ${quoteName(entry.plain.name)} is configured twice`);
      byName.set(entry.plain.name, entry);
    }
    this.#entries = byName;
    this.#default = entries[0];
    this.#exports = entries.map((e) => e.plain);
  }

  list(): readonly Export[] {
    return this.#exports;
  }

  lookup(name: string, client?: ClientIdentity): Export | undefined {
    const entry = name === '' ? this.#default : (this.#entries.get(name) ?? this.#namedOverlayEntry(name));
    if (entry === undefined) return undefined;
    if (entry.requireTls && client?.tls !== true) {
      throw new OptionError(
        NBD_REP_ERR_TLS_REQD,
        `export ${quoteName(entry.plain.name)} requires TLS: send NBD_OPT_STARTTLS first`,
      );
    }
    const address = client?.peerAddress;
    if (entry.allow !== undefined && address !== undefined && !entry.allow.allows(address)) {
      throw new OptionError(NBD_REP_ERR_POLICY, `export ${quoteName(entry.plain.name)} is not available to ${address}`);
    }
    return entry.registry.lookup(name === '' ? entry.plain.name : name, client);
  }

  #namedOverlayEntry(name: string): ExportTableEntry | undefined {
    const split = splitNamedExport(name);
    return split === undefined ? undefined : this.#entries.get(split.exportName);
  }
}
