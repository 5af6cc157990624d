// An async lock over inclusive block ranges. acquire(first, last) resolves once no held range
// overlaps [first, last]; the returned function releases it. Fairness: a request waits behind
// every earlier *waiting* request it overlaps, so a stream of overlapping newcomers cannot
// starve it, while non-overlapping requests still pass. Ranges held at once are few (at most
// the requests in flight), so plain arrays scanned linearly are the right size.

interface Range {
  readonly first: number;
  readonly last: number;
}

interface Waiter extends Range {
  readonly grant: () => void;
}

function overlaps(a: Range, b: Range): boolean {
  return a.first <= b.last && b.first <= a.last;
}

export type Release = () => void;

export class RangeLock {
  readonly #held: Range[] = [];
  #waiting: Waiter[] = [];

  /** Number of ranges held (for tests and diagnostics). */
  get heldCount(): number {
    return this.#held.length;
  }

  /** Number of requests waiting. */
  get waitingCount(): number {
    return this.#waiting.length;
  }

  /** Wait for blocks [first, last] and hold them; call the result exactly once to release. */
  acquire(first: number, last: number): Promise<Release> {
    const range = { first, last };
    if (this.#free(range, this.#waiting.length)) return Promise.resolve(this.#hold(range));
    return new Promise((resolve) => {
      this.#waiting.push({ first, last, grant: () => resolve(this.#hold(range)) });
    });
  }

  /** Hold blocks [first, last] at once if nothing held or waiting overlaps them, else null. */
  tryHold(first: number, last: number): Release | null {
    const range = { first, last };
    return this.#free(range, this.#waiting.length) ? this.#hold(range) : null;
  }

  /** Free of held ranges and of the first `ahead` waiters. */
  #free(range: Range, ahead: number): boolean {
    if (this.#held.some((h) => overlaps(h, range))) return false;
    for (let i = 0; i < ahead; i++) {
      // i < ahead <= #waiting.length
      if (overlaps(this.#waiting[i] as Waiter, range)) return false;
    }
    return true;
  }

  #hold(range: Range): Release {
    this.#held.push(range);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      this.#held.splice(this.#held.indexOf(range), 1);
      this.#wake();
    };
  }

  #wake(): void {
    const still: Waiter[] = [];
    const granted: Waiter[] = [];
    for (const w of this.#waiting) {
      // Blocked by a held range, an earlier waiter that stays, or one granted in this pass.
      const blocked =
        this.#held.some((h) => overlaps(h, w)) || still.some((s) => overlaps(s, w)) || granted.some((g) => overlaps(g, w));
      (blocked ? still : granted).push(w);
    }
    this.#waiting = still;
    for (const w of granted) w.grant();
  }
}
