// What the copy-on-write layer reports of its decisions, for debug traces and metrics: a
// partial write that copied its block up, whole blocks turned into the zero state, whole blocks
// of a WRITE stored as a state instead of data. The server passes an observer down
// (server-events.ts extends this); the default does nothing.

export interface OverlayEvents {
  /** A partial write filled the rest of `block` of the overlay at `path` from the base, or with zeros. */
  copiedUp(path: string, block: number, from: 'base' | 'zero'): void;
  /** Blocks [first, first + count) of the overlay at `path` became the zero state (trim, zero). */
  zeroed(path: string, first: number, count: number): void;
  /**
   * Blocks [first, first + count) of the overlay at `path` were written whole by a WRITE and stored
   * with no data: as the zero state (all zeros), or back in the base state (equal to the base).
   */
  elided(path: string, first: number, count: number, to: 'zero' | 'base'): void;
}

function ignore(): void {
  /* nobody listens */
}

export const NO_OVERLAY_EVENTS: OverlayEvents = { copiedUp: ignore, zeroed: ignore, elided: ignore };
