"""A stand-in for tlsd's spawn helper that forces an order of events on tlsd (held-helper-build.ts
makes tlsd start it through TLSD_SPAWNER).

It runs the real helper (HELD_REAL_HELPER) with an IPC channel of its own and relays everything
between it and tlsd unchanged: tlsd's requests, and the helper's reports with the descriptors they
carry (SCM_RIGHTS, one on each NODE_HANDLE line). Only a child's `started` report, and every report
after it, is held back until HELD_UNTIL says:
  child-exited  the child's process is gone, and tlsd has had a moment to read the ends of its
                standard input and output (so they close before tlsd knows the child runs);
  file:PATH     PATH exists (the test creates it when the moment has come).
Who can reach it: it is tlsd's child, and talks to tlsd and the helper over descriptors only.
"""
import array
import json
import os
import select
import socket
import subprocess
import sys
import time

MOMENT = 0.5
until = os.environ.pop("HELD_UNTIL")
real = os.environ.pop("HELD_REAL_HELPER")
tlsd = socket.socket(fileno=int(os.environ.pop("NODE_CHANNEL_FD")))
ours, theirs = socket.socketpair()
os.environ["NODE_CHANNEL_FD"] = str(theirs.fileno())
helper = subprocess.Popen([real, *sys.argv[1:]], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, pass_fds=[theirs.fileno()])
theirs.close()

outbox = []  # (line, descriptor or None), in order
descriptors = []
text = b""
held_since = None  # when the `started` report at the front of the outbox was seen released


def gone(pid):
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


def released(report):
    global held_since
    if until.startswith("file:"):
        return os.path.exists(until[len("file:"):])
    if not gone(report["pid"]):
        return False
    held_since = held_since or time.monotonic()
    return time.monotonic() - held_since >= MOMENT


def send_ready():
    global held_since
    while outbox:
        line, fd = outbox[0]
        report = json.loads(line)
        if "started" in report and not released(report):
            return
        held_since = None
        if fd is None:
            tlsd.sendall(line + b"\n")
        else:
            tlsd.sendmsg([line + b"\n"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])
            os.close(fd)
        outbox.pop(0)


def from_helper():
    global text
    data, ancillary, _, _ = ours.recvmsg(65536, socket.CMSG_SPACE(16))
    if not data:
        send_ready()
        sys.exit(helper.wait())
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            descriptors.extend(array.array("i", payload[: len(payload) - len(payload) % 4]))
    text += data
    *lines, text = text.split(b"\n")
    for line in lines:
        outbox.append((line, descriptors.pop(0) if b'"NODE_HANDLE"' in line else None))


watched = [0, ours, tlsd]
while True:
    readable, _, _ = select.select(watched, [], [], 0.02)
    if 0 in readable:
        data = os.read(0, 65536)
        try:
            if data:
                helper.stdin.write(data)
                helper.stdin.flush()
            else:
                helper.stdin.close()
                watched.remove(0)
        except BrokenPipeError:
            watched.remove(0)
    if tlsd in readable and not tlsd.recv(65536):  # acknowledgements of descriptors, dropped
        sys.exit(0)
    if ours in readable:
        from_helper()
    send_ready()
