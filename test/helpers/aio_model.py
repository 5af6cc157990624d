#!/usr/bin/env python3
# Random asynchronous I/O against an NBD export, checked against an in-memory model.
#
#   aio_model.py URI BASE_PATH SEED OPS [DEPTH]
#
# Keeps DEPTH (default 64) commands in flight on one connection: pwrite, pread, zero, trim and
# the odd flush, at random offsets and lengths (many unaligned). In-flight ranges never
# overlap, so the model (which starts as the base file's bytes) is exact: every read is checked
# when it completes, and the whole export is compared with the model at the end. This server
# reads trimmed ranges back as zeros, so trim is modelled as zero.
# Prints one JSON line of counters; exits 1 on any mismatch or failed command.

import hashlib
import json
import random
import sys

import nbd


def main():
    uri, base_path, seed, total = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    depth = int(sys.argv[5]) if len(sys.argv) > 5 else 64
    rng = random.Random(seed)
    with open(base_path, "rb") as f:
        model = bytearray(f.read())
    size = len(model)

    h = nbd.NBD()
    h.connect_uri(uri)
    if h.get_size() != size:
        fail(f"export size {h.get_size()} != base size {size}")

    inflight = {}  # cookie -> (kind, offset, length, buffer or None)
    counts = {"pwrite": 0, "pread": 0, "zero": 0, "trim": 0, "flush": 0, "max_in_flight": 0}
    errors = []

    def overlaps(off, length):
        for (_, o, n, _) in inflight.values():
            if off < o + n and o < off + length:
                return True
        return False

    def pick_range():
        for _ in range(100):
            r = rng.random()
            if r < 0.4:
                length = rng.randint(1, 8191)  # small, mostly unaligned
            elif r < 0.8:
                length = rng.choice([512, 4096, 8192, 65536])
            else:
                length = rng.randint(1, 256 * 1024)
            length = min(length, size)
            if rng.random() < 0.5:
                off = rng.randrange(0, size - length + 1) // 512 * 512
            else:
                off = rng.randrange(0, size - length + 1)
            if rng.random() < 0.05:
                off = size - length  # the (possibly partial) last block
            if not overlaps(off, length):
                return off, length
        return None

    issued = 0
    while issued < total or inflight:
        while issued < total and len(inflight) < depth:
            r = rng.random()
            if r < 0.03:
                cookie = h.aio_flush()
                inflight[cookie] = ("flush", 0, 0, None)
                counts["flush"] += 1
                issued += 1
                continue
            picked = pick_range()
            if picked is None:
                break
            off, length = picked
            if r < 0.45:
                data = rng.randbytes(length)
                model[off:off + length] = data
                cookie = h.aio_pwrite(nbd.Buffer.from_bytearray(data), off)
                inflight[cookie] = ("pwrite", off, length, None)
            elif r < 0.85:
                buf = nbd.Buffer(length)
                cookie = h.aio_pread(buf, off)
                inflight[cookie] = ("pread", off, length, buf)
            elif r < 0.95:
                flags = nbd.CMD_FLAG_NO_HOLE if rng.random() < 0.3 else 0
                model[off:off + length] = bytes(length)
                cookie = h.aio_zero(length, off, flags=flags)
                inflight[cookie] = ("zero", off, length, None)
            else:
                model[off:off + length] = bytes(length)
                cookie = h.aio_trim(length, off)
                inflight[cookie] = ("trim", off, length, None)
            counts[inflight[cookie][0]] += 1
            issued += 1
        counts["max_in_flight"] = max(counts["max_in_flight"], h.aio_in_flight())
        if inflight and h.aio_peek_command_completed() == 0:
            h.poll(1000)  # bounded: a reply that already arrived never leaves us blocked
        for cookie in list(inflight):
            try:
                done = h.aio_command_completed(cookie)
            except nbd.Error as e:
                kind, off, length, _ = inflight.pop(cookie)
                errors.append(f"{kind} {off}+{length} failed: {e}")
                continue
            if not done:
                continue
            kind, off, length, buf = inflight.pop(cookie)
            if kind == "pread":
                got = buf.to_bytearray()
                if got != model[off:off + length]:
                    first = next(i for i in range(length) if got[i] != model[off + i])
                    errors.append(f"pread {off}+{length} differs from the model at byte {off + first}")
        if len(errors) > 10:
            break

    if not errors:
        h.flush()
        digest = hashlib.sha256()
        for pos in range(0, size, 4 << 20):
            chunk = h.pread(min(4 << 20, size - pos), pos)
            if chunk != model[pos:pos + len(chunk)]:
                first = next(i for i in range(len(chunk)) if chunk[i] != model[pos + i])
                errors.append(f"final read differs from the model at byte {pos + first}")
                break
            digest.update(chunk)
        counts["final_sha256"] = digest.hexdigest()
        counts["model_sha256"] = hashlib.sha256(model).hexdigest()
    h.shutdown()
    counts["errors"] = errors
    print(json.dumps(counts))
    sys.exit(1 if errors else 0)


def fail(msg):
    print(json.dumps({"errors": [msg]}))
    sys.exit(1)


if __name__ == "__main__":
    main()
