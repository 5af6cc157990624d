// The export registry: what a client can name in NBD_OPT_GO / EXPORT_NAME and how a
// connection's device is opened (deferred open, as nbdkit does: nothing is created until GO,
// and an ephemeral overlay file itself only at the first write).
//
// Names: `EXPORT` (or "") is the export with a private throwaway overlay per connection;
// `EXPORT@NAME` is the named overlay NAME of EXPORT, shared by every connection naming it and
// kept (lib/block/named-overlays.ts). The overlay policy allows either kind or both. Refusals
// are OptionErrors carrying the NBD_REP_ERR_* and a message for the client.

import type { BlockDevice } from '../block/device.js';
import { isValidNamePart, NAME_RULE, splitNamedExport } from '../block/overlay-names.js';
import {
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_CACHE,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_UNKNOWN,
} from '../protocol/constants.js';
import { OptionError } from '../protocol/errors.js';
import { HandOver } from './hand-over.js';

export interface Export {
  /** Canonical name. */
  readonly name: string;
  readonly description: string;
  readonly size: number;
  readonly readOnly: boolean;
  /** Every connection to this export sees the same data and one flush covers all (named overlays). */
  readonly multiConn?: boolean;
  /** For a named overlay `EXPORT@NAME`: EXPORT, the configured export it belongs to. */
  readonly overlayOf?: string;
  /** Preferred request granularity (the overlay block size), advertised in NBD_INFO_BLOCK_SIZE. */
  readonly preferredBlockSize: number;
  /**
   * Open the device one connection will use. Called once per connection, at GO (the reply
   * waits for it); may reject with an OptionError, which becomes the GO's NBD_REP_ERR_*.
   */
  openDevice(): Promise<BlockDevice>;
}

/** What a connection proved about its client, for exports that care. */
export interface ClientIdentity {
  /** The name the client proved in its TLS handshake (PSK user, certificate name), if any. */
  readonly tlsIdentity: string | undefined;
  /** TLS runs on the connection. */
  readonly tls: boolean;
  /** The TCP peer's IP address; undefined for a unix-socket client. */
  readonly peerAddress: string | undefined;
}

export interface ExportRegistry {
  /** Every export, for NBD_OPT_LIST. */
  list(): readonly Export[];
  /** The export a client named (the empty name reaches the default export); may throw OptionError. */
  lookup(name: string, client?: ClientIdentity): Export | undefined;
}

/** Which overlays clients may use: private throwaway ones, named kept ones, or both. */
export type OverlayPolicy = 'throwaway' | 'named' | 'both';
export const OVERLAY_POLICIES: readonly OverlayPolicy[] = ['throwaway', 'named', 'both'];

/** Who may open `EXPORT@NAME`: any client, or only the one whose TLS identity is NAME. */
export type NamedOverlayOwner = 'anyone' | 'tls-identity';
export const NAMED_OVERLAY_OWNERS: readonly NamedOverlayOwner[] = ['anyone', 'tls-identity'];

/** Export names in messages: printable, truncated, as qemu does. */
export function quoteName(name: string): string {
  const clean = name.replace(/[^\x20-\x7e]/g, '?');
  return JSON.stringify(clean.length > 64 ? `${clean.slice(0, 64)}...` : clean);
}

/** A registry of one export, reachable by its name and by "". */
export function singleExportRegistry(exp: Export): ExportRegistry {
  return {
    list: () => [exp],
    lookup: (name) => (name === '' || name === exp.name ? exp : undefined),
  };
}

export interface OverlayRegistryOptions {
  /** The export reached by its plain name: a throwaway overlay per connection, or read-only. */
  readonly plain: Export;
  readonly policy: OverlayPolicy;
  /** Open one connection's device on named overlay `overlayName`; absent: none (read-only). */
  readonly attachNamed?: (overlayName: string) => Promise<BlockDevice>;
  /** Who may open a named overlay (default: anyone). */
  readonly namedOwner?: NamedOverlayOwner;
}

/**
 * One base served as `EXPORT` (throwaway) and `EXPORT@NAME` (named overlays), under `policy`.
 * NBD_OPT_LIST shows only the plain export: named overlays are not enumerated.
 */
export function overlayExportRegistry(options: OverlayRegistryOptions): ExportRegistry {
  const { plain, policy, attachNamed } = options;
  const ownedByIdentity = options.namedOwner === 'tls-identity';
  // Named overlays only: the plain name still answers NBD_OPT_INFO (nbdinfo --list asks for
  // every export it lists), and GO / EXPORT_NAME are refused when they would open it.
  const namedOnly: Export = {
    ...plain,
    openDevice: () =>
      Promise.reject(
        new OptionError(
          NBD_REP_ERR_POLICY,
          `export ${quoteName(plain.name)} only serves named overlays: connect to ${plain.name}@NAME (NAME: ${NAME_RULE})`,
        ),
      ),
  };
  return {
    list: () => [plain],
    lookup: (name, client) => {
      if (name === '' || name === plain.name) return policy === 'named' && !plain.readOnly ? namedOnly : plain;
      const split = splitNamedExport(name);
      if (split === undefined || split.exportName !== plain.name) return undefined;
      if (attachNamed === undefined) {
        throw new OptionError(NBD_REP_ERR_POLICY, 'this server is read-only: named overlays are not available');
      }
      if (policy === 'throwaway') {
        throw new OptionError(NBD_REP_ERR_POLICY, 'named overlays are disabled on this server (--overlays throwaway)');
      }
      if (!isValidNamePart(plain.name)) {
        throw new OptionError(
          NBD_REP_ERR_UNKNOWN,
          `export ${quoteName(plain.name)} cannot have named overlays: its name is not ${NAME_RULE}`,
        );
      }
      if (!isValidNamePart(split.overlayName)) {
        throw new OptionError(NBD_REP_ERR_INVALID, `invalid overlay name ${quoteName(split.overlayName)}: use ${NAME_RULE}`);
      }
      const identity = client?.tlsIdentity;
      if (ownedByIdentity && identity !== split.overlayName) {
        const proved = identity === undefined ? 'no TLS identity' : `the TLS identity ${quoteName(identity)}`;
        throw new OptionError(
          NBD_REP_ERR_POLICY,
          `named overlay ${quoteName(name)} belongs to the TLS identity ${quoteName(split.overlayName)}; this connection has ${proved}`,
        );
      }
      return namedExport(plain, split.overlayName, attachNamed);
    },
  };
}

function namedExport(plain: Export, overlayName: string, attach: (overlayName: string) => Promise<BlockDevice>): Export {
  return {
    name: `${plain.name}@${overlayName}`,
    description: `${plain.name} with the named overlay ${overlayName} (kept, shared by its connections)`,
    size: plain.size,
    readOnly: false,
    multiConn: true,
    overlayOf: plain.name,
    preferredBlockSize: plain.preferredBlockSize,
    openDevice: async () => {
      try {
        return await attach(overlayName);
      } catch (err) {
        // Open in a sibling worker: negotiation.ts moves the connection there (hand-over.ts).
        if (err instanceof HandOver) throw err;
        // In use by another process, another base's overlay, a corrupt file: the message says which.
        throw new OptionError(NBD_REP_ERR_UNKNOWN, err instanceof Error ? err.message : String(err));
      }
    },
  };
}

/**
 * Transmission flags for one connection. DF depends on structured replies, so flags are
 * computed at GO time. A per-connection overlay must never claim CAN_MULTI_CONN: two
 * connections see different data. A read-only export has no cache at all, so it may; so may a
 * named overlay, whose connections share one device (one map, one descriptor, one flush).
 */
export function transmissionFlags(exp: Export, structuredReplies: boolean): number {
  let flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_CACHE;
  if (exp.readOnly) {
    flags |= NBD_FLAG_READ_ONLY | NBD_FLAG_CAN_MULTI_CONN;
  } else {
    flags |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
    if (exp.multiConn === true) flags |= NBD_FLAG_CAN_MULTI_CONN;
  }
  if (structuredReplies) flags |= NBD_FLAG_SEND_DF;
  return flags;
}
