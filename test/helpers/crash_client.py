#!/usr/bin/env python3
# The client side of the crash test (test/e2e/named-overlay-crash.test.ts), on python3-libnbd.
#
#   crash_client.py write  URI SEED SIZE BLOCK OPS
#       Runs OPS random operations (write, write with FUA, zero, trim, flush) made from SEED, one
#       at a time, printing "ack N" after operation N completes. Stops at the first error (the
#       server was killed) and exits 0 either way.
#   crash_client.py verify URI SEED SIZE BLOCK ACKED
#       Replays the same operations on a model and reads the whole export back. Every block of
#       BLOCK bytes must hold a value it had since its last durability point: the last
#       acknowledged FLUSH, or an acknowledged FUA write covering it. Operation ACKED + 1 may or
#       may not have happened (it was in flight at the kill), so its result is allowed too.
#       Prints "ok BLOCKS EXACT" (blocks checked, of which exactly determined) or the first
#       mismatch, and exits 0 or 1.
#
# The base content comes from the export itself: verify is also given the base's bytes through
# the plain export (URI with the "@NAME" removed), which is never written.

import random
import sys

import nbd


def operations(seed, size, block, count):
    rng = random.Random(seed)
    for n in range(count):
        roll = rng.random()
        if roll < 0.12:
            yield n, ("flush", 0, 0, None)
            continue
        # Mostly block-aligned, sometimes not; up to 8 blocks.
        if rng.random() < 0.7:
            offset = rng.randrange(size // block) * block
            length = rng.randint(1, 8) * block
        else:
            offset = rng.randrange(size)
            length = rng.randint(1, 8 * block)
        length = min(length, size - offset)
        if roll < 0.72:
            fua = rng.random() < 0.1
            yield n, ("write_fua" if fua else "write", offset, length, rng.randbytes(length))
        elif roll < 0.86:
            yield n, ("zero", offset, length, None)
        else:
            yield n, ("trim", offset, length, None)


def apply(h, op):
    kind, offset, length, data = op
    if kind == "flush":
        h.flush()
    elif kind == "write":
        h.pwrite(data, offset)
    elif kind == "write_fua":
        h.pwrite(data, offset, nbd.CMD_FLAG_FUA)
    elif kind == "zero":
        h.zero(length, offset)
    else:
        h.trim(length, offset)


def write(uri, seed, size, block, count):
    h = nbd.NBD()
    h.connect_uri(uri)
    for n, op in operations(seed, size, block, count):
        try:
            apply(h, op)
        except nbd.Error as e:
            print(f"error {n} {e}", flush=True)
            return
        print(f"ack {n}", flush=True)
    h.shutdown()


def read_all(uri, size):
    h = nbd.NBD()
    h.connect_uri(uri)
    out = bytearray()
    while len(out) < size:
        out += h.pread(min(1 << 20, size - len(out)), len(out))
    h.shutdown()
    return bytes(out)


def verify(uri, seed, size, block, acked):
    plain = uri.replace("@" + uri.split("@")[1].split("?")[0], "", 1)
    model = bytearray(read_all(plain, size))
    nblocks = (size + block - 1) // block
    span = lambda b: (b * block, min(size, (b + 1) * block))
    allowed = [{bytes(model[slice(*span(b))])} for b in range(nblocks)]

    def record(first, last):
        for b in range(first, last + 1):
            allowed[b].add(bytes(model[slice(*span(b))]))

    for n, (kind, offset, length, data) in operations(seed, size, block, acked + 2):
        if kind == "flush":
            if n <= acked:
                allowed = [{bytes(model[slice(*span(b))])} for b in range(nblocks)]
            continue
        if kind.startswith("write"):
            model[offset:offset + length] = data
        else:
            model[offset:offset + length] = bytes(length)
        first, last = offset // block, (offset + length - 1) // block
        if kind == "write_fua" and n <= acked:
            for b in range(first, last + 1):
                allowed[b] = {bytes(model[slice(*span(b))])}
        else:
            record(first, last)

    got = read_all(uri, size)
    exact = 0
    for b in range(nblocks):
        value = got[slice(*span(b))]
        if value not in allowed[b]:
            print(f"block {b} (offset {b * block}) holds a value it never had since its last flush "
                  f"({len(allowed[b])} allowed)", flush=True)
            return 1
        exact += len(allowed[b]) == 1
    print(f"ok {nblocks} {exact}", flush=True)
    return 0


def main():
    mode, uri = sys.argv[1], sys.argv[2]
    seed, size, block, n = (int(x) for x in sys.argv[3:7])
    if mode == "write":
        write(uri, seed, size, block, n)
        return 0
    return verify(uri, seed, size, block, n)


if __name__ == "__main__":
    sys.exit(main())
