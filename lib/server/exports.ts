// The export registry: what a client can name in NBD_OPT_GO / EXPORT_NAME and how a
// connection's device is opened (deferred open, as nbdkit does: nothing is created until GO,
// and the overlay file itself only at the first write).

import type { BlockDevice } from '../block/device.js';
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
} from '../protocol/constants.js';

export interface Export {
  /** Canonical name. */
  readonly name: string;
  readonly description: string;
  readonly size: number;
  readonly readOnly: boolean;
  /** Preferred request granularity (the overlay block size), advertised in NBD_INFO_BLOCK_SIZE. */
  readonly preferredBlockSize: number;
  /** Open the device one connection will use. Called once per connection, at GO. */
  openDevice(): BlockDevice;
}

export interface ExportRegistry {
  /** Every export, for NBD_OPT_LIST. */
  list(): readonly Export[];
  /** The export a client named; the empty name reaches the default export. */
  lookup(name: string): Export | undefined;
}

/** A registry of one export, reachable by its name and by "". */
export function singleExportRegistry(exp: Export): ExportRegistry {
  return {
    list: () => [exp],
    lookup: (name) => (name === '' || name === exp.name ? exp : undefined),
  };
}

/**
 * Transmission flags for one connection. DF depends on structured replies, so flags are
 * computed at GO time. A per-connection overlay must never claim CAN_MULTI_CONN: two
 * connections see different data. A read-only export has no cache at all, so it may.
 */
export function transmissionFlags(exp: Export, structuredReplies: boolean): number {
  let flags = NBD_FLAG_HAS_FLAGS | NBD_FLAG_SEND_FLUSH | NBD_FLAG_SEND_FUA | NBD_FLAG_SEND_CACHE;
  if (exp.readOnly) {
    flags |= NBD_FLAG_READ_ONLY | NBD_FLAG_CAN_MULTI_CONN;
  } else {
    flags |= NBD_FLAG_SEND_TRIM | NBD_FLAG_SEND_WRITE_ZEROES | NBD_FLAG_SEND_FAST_ZERO;
  }
  if (structuredReplies) flags |= NBD_FLAG_SEND_DF;
  return flags;
}
