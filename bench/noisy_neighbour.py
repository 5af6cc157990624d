#!/usr/bin/python3
"""The bench's noisy-neighbour client (bench/README.md, "Noisy neighbour"), python3-libnbd.

    noisy_neighbour.py main URI BASE SIZE WARM SECONDS COLD_BS COLD_QD

1. Reads the first WARM bytes of the export once through NBD (1 MiB reads), so they are warm
   in the page cache and in any server-side cache, and drops the rest of BASE (the cold part)
   from the page cache with posix_fadvise(DONTNEED).
2. "alone": one connection reads 4 KiB at random aligned offsets of the warm region, QD1,
   for SECONDS; each read is timed (perf_counter_ns around the blocking pread).
3. "beside": the same, while a second process ("cold" role below, its own connection) reads
   COLD_BS blocks at random offsets of the cold part, COLD_QD in flight (libnbd aio).

Prints one JSON object on stdout. Progress and errors go to stderr.

    noisy_neighbour.py cold URI BASE SIZE WARM SECONDS COLD_BS COLD_QD

The cold reader: connects, prints "ready", reads for SECONDS, prints its JSON. It reads every
COLD_BS block of the cold part once in a random order; should it get through all of them, it
drops the cold part from the page cache again and starts a new order (counted as "wraps").
"""

import json
import os
import random
import subprocess
import sys
import time

import nbd

MiB = 1024 * 1024


def log(msg):
    sys.stderr.write(f"[noisy-neighbour {os.getpid()}] {msg}\n")
    sys.stderr.flush()


def connect(uri):
    h = nbd.NBD()
    h.set_handle_name("noisy-neighbour")
    h.connect_uri(uri)
    return h


def drop_cache(path, start, length):
    """Drop [start, start+length) of the file from the page cache (clean pages only)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, start, length, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resident_bytes(path):
    """Bytes of the file in the page cache (util-linux fincore), or None."""
    try:
        r = subprocess.run(
            ["fincore", "--bytes", "--noheadings", "--output", "RES", path],
            capture_output=True, text=True, timeout=30, check=True,
        )
        return int(r.stdout.split()[0])
    except Exception:  # noqa: BLE001 - no fincore, or an odd output: just not reported
        return None


def stats(lat_ns, seconds):
    lat = sorted(x / 1000 for x in lat_ns)
    n = len(lat)

    def pct(p):
        if n == 0:
            return None
        rank = max(1, round(p / 100 * n))
        return round(lat[min(rank, n) - 1], 1)

    return {
        "reads": n,
        "measured_s": round(seconds, 3),
        "iops": round(n / seconds) if seconds > 0 else None,
        "lat_mean_us": round(sum(lat) / n, 1) if n else None,
        "lat_p50_us": pct(50),
        "lat_p99_us": pct(99),
        "lat_p999_us": pct(99.9),
        "lat_max_us": round(lat[-1], 1) if n else None,
    }


def qd1(h, warm, seconds):
    blocks = warm // 4096
    lat = []
    rnd = random.Random()
    t_start = time.perf_counter_ns()
    end = t_start + int(seconds * 1e9)
    now = t_start
    while now < end:
        off = rnd.randrange(blocks) * 4096
        t0 = time.perf_counter_ns()
        h.pread(4096, off)
        now = time.perf_counter_ns()
        lat.append(now - t0)
    return stats(lat, (now - t_start) / 1e9)


def cold_role(uri, base, size, warm, seconds, bs, qd):
    h = connect(uri)
    first = (warm + bs - 1) // bs
    last = size // bs  # blocks [first, last) lie wholly in the cold part
    if last <= first:
        raise SystemExit("no cold part: WARM must be smaller than SIZE by at least one block")
    order = list(range(first, last))
    rnd = random.Random()
    rnd.shuffle(order)
    nxt = 0
    wraps = 0
    inflight = {}  # cookie -> (buffer, start ns)
    lat = []
    print("ready", flush=True)
    t_start = time.perf_counter_ns()
    end = t_start + int(seconds * 1e9)
    while True:
        now = time.perf_counter_ns()
        while len(inflight) < qd and now < end:
            if nxt == len(order):
                drop_cache(base, first * bs, (last - first) * bs)
                rnd.shuffle(order)
                nxt = 0
                wraps += 1
            buf = nbd.Buffer(bs)
            cookie = h.aio_pread(buf, order[nxt] * bs)
            nxt += 1
            inflight[cookie] = (buf, time.perf_counter_ns())
        if not inflight:
            break
        h.poll(-1)
        for cookie in [c for c in inflight if h.aio_command_completed(c)]:
            _, t0 = inflight.pop(cookie)
            lat.append(time.perf_counter_ns() - t0)
    elapsed = (time.perf_counter_ns() - t_start) / 1e9
    h.shutdown()
    out = stats(lat, elapsed)
    out["MiB_per_s"] = round(len(lat) * bs / MiB / elapsed, 1) if elapsed > 0 else None
    out["wraps"] = wraps
    out["blocks"] = last - first
    print(json.dumps(out), flush=True)


def main_role(uri, base, size, warm, seconds, bs, qd):
    h = connect(uri)
    if h.get_size() != size:
        raise SystemExit(f"export size {h.get_size()}, expected {size}")
    out = {"warm_bytes": warm, "cold_bytes": size - warm, "seconds": seconds, "cold_bs": bs, "cold_qd": qd}
    # Warm the warm region through the server, then make the rest cold.
    for off in range(0, warm, MiB):
        h.pread(min(MiB, warm - off), off)
    drop_cache(base, warm, size - warm)
    out["resident_after_drop_bytes"] = resident_bytes(base)
    log(f"warm {warm} bytes, cold part dropped; resident {out['resident_after_drop_bytes']}")
    out["alone"] = qd1(h, warm, seconds)
    log(f"alone: {out['alone']}")
    cold = subprocess.Popen(
        [sys.executable, "-u", __file__, "cold", uri, base, str(size), str(warm), str(seconds + 0.5), str(bs), str(qd)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        line = cold.stdout.readline().strip()
        if line != "ready":
            raise SystemExit(f"cold reader did not start (said {line!r}, exit {cold.poll()})")
        out["beside_cold"] = qd1(h, warm, seconds)
        log(f"beside the cold reader: {out['beside_cold']}")
        rest, _ = cold.communicate(timeout=seconds + 60)
    finally:
        if cold.poll() is None:
            cold.kill()
            cold.wait()
    if cold.returncode != 0:
        raise SystemExit(f"cold reader exited with {cold.returncode}")
    out["cold_reader"] = json.loads(rest.strip().splitlines()[-1])
    out["resident_at_end_bytes"] = resident_bytes(base)
    h.shutdown()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 9 or sys.argv[1] not in ("main", "cold"):
        raise SystemExit(__doc__)
    role, uri, base = sys.argv[1], sys.argv[2], sys.argv[3]
    size, warm = int(sys.argv[4]), int(sys.argv[5])
    seconds, bs, qd = float(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
    (main_role if role == "main" else cold_role)(uri, base, size, warm, seconds, bs, qd)
