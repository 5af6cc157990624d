#!/usr/bin/env python3
# A stand-in for systemd's notification socket (test/server/readiness.test.ts): binds an AF_UNIX
# datagram socket at PATH, prints "bound", then one JSON line per message received:
# {"data": "READY=1\n...", "pid": SENDER_PID, "fds": N}.
#
#   notify_receiver.py PATH [--keep-fds]
#
# Like systemd it closes the fds a message carries (the pipe of systemd-notify's BARRIER=1,
# which it waits on); --keep-fds holds them instead, as a service manager that never answers.

import array
import json
import os
import socket
import sys

path = sys.argv[1]
keep_fds = "--keep-fds" in sys.argv[2:]
kept = []
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind(path)
# SO_PASSCRED: the kernel attaches the sender's credentials (what systemd attributes messages by).
sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
print("bound", flush=True)
sock.settimeout(120)
try:
    while True:
        data, ancillary, _flags, _addr = sock.recvmsg(4096, socket.CMSG_SPACE(4 * 16) + socket.CMSG_SPACE(12))
        fds = []
        pid = None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.extend(array.array("i", payload[: len(payload) - len(payload) % 4]))
            elif level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = array.array("i", payload[:12])[0]
        print(json.dumps({"data": data.decode(), "pid": pid, "fds": len(fds)}), flush=True)
        # Printed first: closing the barrier's pipe lets systemd-notify exit.
        if keep_fds:
            kept.extend(fds)
        else:
            for fd in fds:
                os.close(fd)
except socket.timeout:
    pass
