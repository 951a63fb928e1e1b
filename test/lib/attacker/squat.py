"""A local attacker of another uid against tlsd's spawn path (test/tlsd-local-attacker.ts).

Usage: squat.py TLSD_PID SECONDS. Every 20 ms it looks for names tlsd's processes could meet at:
arguments on the command lines of tlsd and its descendants, and Unix sockets in /proc/net/unix
whose name mentions tlsd's pid. It binds each as an abstract name at its exact length and padded
to the full sun_path (the two forms a client may use), and connects to each it could not bind (abstract, both
forms, and as a path), holding every connection and sending what a stdio connection of the old protocol
began with. It prints one JSON report at the end: what it bound, what accepted its connections,
and every byte anyone sent it.
"""
import json
import os
import select
import socket
import sys
import time

tlsd_pid = int(sys.argv[1])
deadline = time.monotonic() + float(sys.argv[2])
SUN_PATH = 108
report = {"squatted": [], "connected": [], "accepted": 0, "received": 0, "scans": 0}
listeners = []
connections = []
tried = set()


def family():
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat", "rb").read()
                parents[int(entry)] = int(stat[stat.rindex(b")") + 2 :].split()[1])
            except (OSError, ValueError):
                pass
    pids, grown = {tlsd_pid}, True
    while grown:
        grown = False
        for pid, parent in parents.items():
            if parent in pids and pid not in pids:
                pids.add(pid)
                grown = True
    return pids


def names():
    found = set()
    for pid in family():
        try:
            args = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        found.update(arg for arg in args[1:] if 0 < len(arg) < SUN_PATH - 1)
    try:
        for line in open("/proc/net/unix", "rb").read().splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 8 and str(tlsd_pid).encode() in fields[7]:
                path = fields[7]
                found.add(b"\0" + path[1:].rstrip(b"@") if path.startswith(b"@") else path)
    except OSError:
        pass
    return found


def addresses(name):
    base = name[1:] if name.startswith(b"\0") else name
    forms = [b"\0" + base, (b"\0" + base).ljust(SUN_PATH, b"\0")]
    return forms if name.startswith(b"\0") else forms + [name]


def attack(name):
    for address in addresses(name):
        if address in tried:
            continue
        tried.add(address)
        label = address.rstrip(b"\0").decode("latin1")
        if address.startswith(b"\0"):
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                server.bind(address)
                server.listen(64)
                server.setblocking(False)
                listeners.append(server)
                report["squatted"].append(label + (" (padded)" if address.endswith(b"\0") else ""))
                continue  # ours now: connecting would only reach ourselves
            except OSError:
                server.close()
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.settimeout(0.2)
        try:
            client.connect(address)
            client.setblocking(False)
            try:
                client.send(b"0" * 32 + b"o\n")
            except OSError:
                pass
            connections.append(client)
            report["connected"].append(label)
        except OSError:
            client.close()


def collect():
    for server in listeners:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                break
            connection.setblocking(False)
            connections.append(connection)
            report["accepted"] += 1
    readable, _, _ = select.select(connections, [], [], 0) if connections else ([], [], [])
    for connection in readable:
        try:
            report["received"] += len(connection.recv(65536))
        except OSError:
            pass


print("watching", flush=True)
while time.monotonic() < deadline:
    for name in names():
        attack(name)
    collect()
    report["scans"] += 1
    time.sleep(0.02)
collect()
print(json.dumps(report), flush=True)
