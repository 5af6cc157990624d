// What a configuration file (--config, doc/config.md) describes, once parsed and checked: the
// listeners, the server-wide settings and each export. The command-line flags make the same
// thing with one listener and one export (bin/nbd-cow.ts), so both run one code path.

import type { LogFormat, LogLevel } from '../log.js';
import type { RemoteOptions } from '../remote/remote-options.js';
import type { NamedOverlayOwner, OverlayPolicy } from '../server/exports.js';
import type { ListenAddress } from '../server/listener.js';
import type { TlsMode } from '../server/tls-credentials.js';

export interface ListenerConfig {
  readonly address: ListenAddress;
  /** Unix sockets only: permission bits of the socket file (e.g. 0o660). */
  readonly socketMode?: number;
  /** Unix sockets only: group (name or gid) of the socket file. */
  readonly socketGroup?: string | number;
}

export interface ExportConfig {
  /** The name clients give in NBD_OPT_GO; unique; [A-Za-z0-9._-], 1-64 characters, not starting with '.'. */
  readonly name: string;
  /**
   * Path of the base image (resolved against the config file's directory when relative), or an
   * http:// or https:// URL of one (lib/remote/).
   */
  readonly base: string;
  /** How a remote base is fetched and cached; unused for a local file. */
  readonly remote?: RemoteOptions;
  /**
   * Frozen overlays stacked on the base, bottom first (resolved like base): clients' overlays
   * sit on the last one. None when absent.
   */
  readonly layers?: readonly string[];
  readonly description?: string;
  readonly readOnly: boolean;
  readonly blockSize: number;
  readonly overlays: OverlayPolicy;
  /** Where this export's overlay files live (resolved like base); default: the server's default. */
  readonly overlayDir?: string;
  readonly maxOverlaySize?: number;
  readonly maxOverlayDirSize?: number;
  /** Store no data for a whole block a WRITE makes equal to the base's (it goes back to "base"); default false. */
  readonly elideBaseMatches?: boolean;
  readonly namedOverlayOwner: NamedOverlayOwner;
  /** TCP clients that may use this export (CIDR or address); others are refused at NBD_OPT_GO. */
  readonly allow?: readonly string[];
  /** Only TLS clients may use this export (NBD_REP_ERR_TLS_REQD for others). */
  readonly requireTls: boolean;
}

export interface ServerConfig {
  /** The file it came from (absolute), for messages; '' when made from the command line. */
  readonly source: string;
  readonly listen: readonly ListenerConfig[];
  readonly exports: readonly ExportConfig[];
  readonly tls?: {
    readonly mode: TlsMode;
    readonly certificates?: string;
    readonly pskFile?: string;
    readonly verifyPeer?: boolean;
  };
  /** TCP clients that may connect at all (checked at accept, before the greeting). */
  readonly allow?: readonly string[];
  readonly maxConnections?: number;
  /** Seconds a client has to choose an export. */
  readonly handshakeTimeout?: number;
  readonly bufferMemory?: number;
  readonly user?: string | number;
  readonly group?: string | number;
  readonly logLevel?: LogLevel;
  readonly logFormat?: LogFormat;
  readonly metrics?: { readonly host: string; readonly port: number };
}
