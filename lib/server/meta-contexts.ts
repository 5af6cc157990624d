// The metadata contexts we serve (proto.md "Metadata querying") and how block-layer extent
// states turn into their status values:
//   base:allocation        data → 0, zero → HOLE|ZERO, base → 0 (we cannot see holes in the base)
//   qemu:allocation-depth  the extent's depth: the overlay (data or zero) → 1, the layers below
//                          → 2, 3, ..., the base file → one more (qemu's docs/interop/nbd.rst)

import { type Extent, extentDepth } from '../block/device.js';
import { CONTEXT_BASE_ALLOCATION, CONTEXT_QEMU_ALLOCATION_DEPTH, NBD_STATE_HOLE, NBD_STATE_ZERO } from '../protocol/constants.js';

export interface MetaContext {
  readonly name: string;
  /** Transient id sent in NBD_REP_META_CONTEXT and in block status chunks. */
  readonly id: number;
  status(extent: Extent): number;
}

const ALL: readonly MetaContext[] = [
  {
    name: CONTEXT_BASE_ALLOCATION,
    id: 1,
    status: (extent) => (extent.state === 'zero' ? NBD_STATE_HOLE | NBD_STATE_ZERO : 0),
  },
  {
    name: CONTEXT_QEMU_ALLOCATION_DEPTH,
    id: 2,
    status: extentDepth,
  },
];

function namespaceOf(name: string): string {
  const colon = name.indexOf(':');
  return colon < 0 ? '' : name.slice(0, colon + 1);
}

/**
 * Contexts matching LIST_META_CONTEXT queries: no query lists everything; a bare namespace
 * ("base:", "qemu:") lists that namespace; otherwise exact names. Unknown queries are ignored.
 */
export function listContexts(queries: readonly string[]): MetaContext[] {
  if (queries.length === 0) return [...ALL];
  return ALL.filter((ctx) => queries.some((q) => q === ctx.name || q === namespaceOf(ctx.name)));
}

/** Contexts selected by SET_META_CONTEXT: exact names only ("base:" alone MUST be ignored). */
export function selectContexts(queries: readonly string[]): MetaContext[] {
  return ALL.filter((ctx) => queries.includes(ctx.name));
}

/** Whether a query string is well formed: it names a namespace ("ns:..."). */
export function isWellFormedQuery(query: string): boolean {
  return namespaceOf(query) !== '';
}
