#!/usr/bin/env python3
# A line-oriented driver for python3-libnbd, used by the end-to-end tests (test/helpers/py-session.ts).
# Each stdin line is one JSON request; each request gets exactly one JSON line on stdout:
#   {"ok": true, ...result}  or  {"ok": false, "error": "...", "errno": N}
# Several connections can be open at once, named by "h" (default "a"); a connection and its
# overlay live until "close" (or until stdin ends).
#
# Requests:
#   {"op": "connect", "h": "a", "uri": "...", "contexts": ["base:allocation", ...]}
#   {"op": "info"}                                   size, can_* flags, negotiated contexts
#   {"op": "pwrite", "offset": N, "data": "<base64>", "fua": false}
#   {"op": "pwrite_file", "path": "...", "offset": 0, "chunk": 1048576}
#                                                    writes the file (all-zero chunks are sent
#                                                    as write_zeroes, as nbdcopy does)
#   {"op": "pread", "offset": N, "length": N}        -> {"data": "<base64>"}
#   {"op": "sha256", "offset": 0, "length": null}    -> {"sha256": hex} of that range
#   {"op": "zero" | "trim" | "cache", "offset": N, "length": N, "no_hole": false, "fua": false}
#   {"op": "flush"}
#   {"op": "block_status", "offset": N, "length": N} -> {"contexts": {name: [[len, flags], ...]}}
#   {"op": "close"}

import base64
import hashlib
import json
import sys

import nbd

handles = {}


def handle(req):
    name = req.get("h", "a")
    if name not in handles:
        raise KeyError(f"no connection named {name!r}")
    return handles[name]


def flags_of(req):
    f = 0
    if req.get("fua"):
        f |= nbd.CMD_FLAG_FUA
    if req.get("no_hole"):
        f |= nbd.CMD_FLAG_NO_HOLE
    return f


def op_connect(req):
    h = nbd.NBD()
    h.set_uri_allow_local_file(True)  # the tests' URIs name key files (tls-psk-file)
    for ctx in req.get("contexts", []):
        h.add_meta_context(ctx)
    h.connect_uri(req["uri"])
    handles[req.get("h", "a")] = h
    return {"size": h.get_size()}


def op_info(req):
    h = handle(req)
    out = {"size": h.get_size()}
    for flag in ("is_read_only", "can_flush", "can_fua", "can_trim", "can_zero", "can_multi_conn",
                 "can_cache", "can_fast_zero", "can_df"):
        out[flag] = bool(getattr(h, flag)())
    out["contexts"] = {c: bool(h.can_meta_context(c))
                       for c in ("base:allocation", "qemu:allocation-depth")}
    return out


def op_pwrite(req):
    handle(req).pwrite(base64.b64decode(req["data"]), req["offset"], flags_of(req))
    return {}


def op_pwrite_file(req):
    h = handle(req)
    chunk = req.get("chunk", 1 << 20)
    offset = req.get("offset", 0)
    written = zeroed = 0
    with open(req["path"], "rb") as f:
        while True:
            buf = f.read(chunk)
            if not buf:
                break
            if buf.count(0) == len(buf):
                h.zero(len(buf), offset)
                zeroed += len(buf)
            else:
                h.pwrite(buf, offset)
                written += len(buf)
            offset += len(buf)
    return {"written": written, "zeroed": zeroed}


def op_pread(req):
    return {"data": base64.b64encode(handle(req).pread(req["length"], req["offset"])).decode()}


def op_sha256(req):
    h = handle(req)
    start = req.get("offset", 0)
    length = req.get("length")
    end = h.get_size() if length is None else start + length
    digest = hashlib.sha256()
    pos = start
    while pos < end:
        n = min(4 << 20, end - pos)
        digest.update(h.pread(n, pos))
        pos += n
    return {"sha256": digest.hexdigest()}


def op_zero(req):
    handle(req).zero(req["length"], req["offset"], flags_of(req))
    return {}


def op_trim(req):
    handle(req).trim(req["length"], req["offset"], flags_of(req))
    return {}


def op_cache(req):
    handle(req).cache(req["length"], req["offset"])
    return {}


def op_flush(req):
    handle(req).flush()
    return {}


def op_block_status(req):
    h = handle(req)
    out = {}

    def extent(ctx, offset, entries, err):
        pairs = out.setdefault(ctx, [])
        for i in range(0, len(entries), 2):
            pairs.append([entries[i], entries[i + 1]])
        return 0

    h.block_status(req["length"], req["offset"], extent)
    return {"contexts": out}


def op_close(req):
    name = req.get("h", "a")
    h = handles.pop(name)
    h.shutdown()
    del h
    return {}


OPS = {
    "connect": op_connect,
    "info": op_info,
    "pwrite": op_pwrite,
    "pwrite_file": op_pwrite_file,
    "pread": op_pread,
    "sha256": op_sha256,
    "zero": op_zero,
    "trim": op_trim,
    "cache": op_cache,
    "flush": op_flush,
    "block_status": op_block_status,
    "close": op_close,
}


def main():
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        req = json.loads(line)
        try:
            res = OPS[req["op"]](req)
            res["ok"] = True
        except nbd.Error as e:
            res = {"ok": False, "error": str(e), "errno": e.errno or 0}
        except Exception as e:  # a bad request: report it, keep the session
            res = {"ok": False, "error": f"{type(e).__name__}: {e}", "errno": 0}
        sys.stdout.write(json.dumps(res) + "\n")
        sys.stdout.flush()
    for name in list(handles):
        try:
            handles.pop(name).shutdown()
        except nbd.Error:
            pass


if __name__ == "__main__":
    main()
