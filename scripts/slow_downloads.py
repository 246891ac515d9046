#!/usr/bin/env python3
"""A crowd of slow readers in http mode, as a user runs the proxy (its defaults): N clients,
each with a 2 KiB receive buffer set before connecting, ask for 4 MB on keep-alive connections
and read nothing; then ten plain GETs, one after another, each with a 10 s timeout. Prints
/stats' parked and busy workers, and how many GETs were answered and the slowest.

  scripts/slow_downloads.py [PROXY_BIN] [N]      (default target/release/proxy_server, 600)

Loopback only; the dummy backend and the proxy started here are stopped by pid."""
import json, os, socket, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
binary = os.path.abspath(sys.argv[1]) if len(sys.argv) > 1 else f"{ROOT}/target/release/proxy_server"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 600

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def wait_port(port):
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), 1).close()
            return
        except OSError:
            time.sleep(0.1)
    sys.exit(f"nothing listens on {port}")

work = tempfile.mkdtemp()
port, admin, dport = free_port(), free_port(), free_port()
with open(f"{work}/p.ini", "w") as f:
    f.write(f"[proxy]\nlisten = 127.0.0.1:{port}\nmode = http\nlog_file =\nlog_level = warn\n"
            f"[health]\nenabled = false\n[admin]\nlisten = 127.0.0.1:{admin}\n[backends]\napp1 = 127.0.0.1:{dport}\n")
quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work)
dummy = subprocess.Popen([f"{ROOT}/target/release/dummy_server", str(dport)], **quiet)
proxy = subprocess.Popen([binary, "--config", f"{work}/p.ini"], **quiet)
try:
    wait_port(dport)
    wait_port(port)
    crowd = []
    for _ in range(n):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        s.connect(("127.0.0.1", port))
        s.sendall(b"GET /?bytes=4000000 HTTP/1.1\r\nHost: x\r\n\r\n")
        crowd.append(s)
    time.sleep(2)
    stats = json.load(urllib.request.urlopen(f"http://127.0.0.1:{admin}/stats", timeout=10))
    print(f"{n} slow readers: parked {stats['parked']}, workers busy {stats['workers_busy']}")
    answered, slowest = 0, 0.0
    for _ in range(10):
        started = time.time()
        try:
            with socket.create_connection(("127.0.0.1", port), 10) as c:
                c.settimeout(10)
                c.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                reply = b""
                while chunk := c.recv(65536):
                    reply += chunk
                answered += reply.startswith(b"HTTP/1.1 200")
        except OSError:
            pass
        slowest = max(slowest, time.time() - started)
    print(f"GETs beside them: {answered} of 10 answered, slowest {slowest * 1000:.0f} ms")
    for s in crowd:
        s.close()
finally:
    for proc in (proxy, dummy):
        proc.terminate()
        proc.wait()
