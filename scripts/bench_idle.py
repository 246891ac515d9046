#!/usr/bin/env python3
"""Holds N idle keep-alive HTTP connections open through a proxy, then checks every one of them
still answers. Usage: bench_idle.py HOST PORT N READY_FILE GO_FILE

Opens N connections (bounded in time), sends one request on each and reads its response; then
writes READY_FILE and waits (at most 120 s) for GO_FILE, while the caller measures the proxy;
then sends a second request on every connection and prints "answered A of N" for both rounds.
"""
import os
import selectors
import socket
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"


def round_trip(conns, deadline):
    sel = selectors.DefaultSelector()
    pending = {}
    for s in conns:
        try:
            s.sendall(REQUEST)
            pending[s] = b""
            sel.register(s, selectors.EVENT_READ)
        except OSError:
            pass
    answered = 0
    while pending and time.time() < deadline:
        for key, _ in sel.select(timeout=1.0):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if not data:
                sel.unregister(s)
                del pending[s]
                continue
            pending[s] += data
            buf = pending[s]
            end = buf.find(b"\r\n\r\n")
            if end >= 0:
                head = buf[:end].lower()
                length = 0
                for line in head.split(b"\r\n"):
                    if line.startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if len(buf) >= end + 4 + length:
                    answered += 1
                    sel.unregister(s)
                    del pending[s]
    sel.close()
    return answered


def main():
    host, port, n, ready, go = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    deadline = time.time() + 120
    conns = []
    for _ in range(n):
        if time.time() > deadline:
            break
        try:
            s = socket.create_connection((host, port), timeout=10)
            s.setblocking(False)
            conns.append(s)
        except OSError as e:
            print(f"connect failed after {len(conns)}: {e}", file=sys.stderr)
            break
    first = round_trip(conns, time.time() + 60)
    with open(ready, "w") as f:
        f.write(f"{len(conns)} {first}\n")
    wait_until = time.time() + 120
    while not os.path.exists(go) and time.time() < wait_until:
        time.sleep(0.1)
    second = round_trip(conns, time.time() + 60)
    print(f"opened {len(conns)} answered {first} then {second} of {n}")


if __name__ == "__main__":
    main()
