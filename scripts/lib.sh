# Shared helpers for the scripts; source it, don't run it.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PIDS="$ROOT/logs/backends.pids"

# wait_port HOST PORT [TRIES]: waits until HOST:PORT accepts a connection (0.1 s per try).
wait_port() {
    local host=$1 port=$2 tries=${3:-100}
    for _ in $(seq "$tries"); do
        if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    echo "nothing is listening on $host:$port" >&2
    return 1
}

# is_ours PID NAME: true if PID is alive and runs the program NAME (guards against pid reuse).
is_ours() {
    local pid=$1 name=$2
    [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "$name"
}

# free_port: a loopback port nobody listens on now (the kernel picks it).
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# nginx_backend_conf DIR PORT: writes DIR/backend.conf, the benchmarks' backend: nginx with one
# worker answering `return 200 "ok"` on 127.0.0.1:PORT, access log off, long keep-alive.
nginx_backend_conf() {
    local dir=$1 port=$2
    cat >"$dir/backend.conf" <<CONF
worker_processes 1; daemon off; pid $dir/backend.pid; error_log $dir/backend.err;
worker_rlimit_nofile 20000;
events { worker_connections 20000; }
http { access_log off; keepalive_requests 10000000; keepalive_timeout 300s;
  server { listen 127.0.0.1:$port backlog=4096; location / { return 200 "ok\n"; } } }
CONF
}

# haproxy_http_conf FILE PORT BACKEND_PORT: writes FILE, the scripts' HAProxy HTTP contestant:
# leastconn over one server, http-reuse always, nbthread 2, as its users run it.
haproxy_http_conf() {
    cat >"$1" <<CONF
global
    nbthread 2
    maxconn 9500
defaults
    mode http
    timeout connect 5s
    timeout client 300s
    timeout server 300s
frontend http_in
    bind 127.0.0.1:$2
    default_backend app
backend app
    balance leastconn
    http-reuse always
    server s1 127.0.0.1:$3 maxconn 10000
CONF
}

# pids_of PID: the process and its children (nginx workers, Apache children).
pids_of() {
    echo "$1"; pgrep -P "$1" 2>/dev/null || true
}

# cpu_ticks PID: utime + stime summed over the process and its children, in clock ticks.
cpu_ticks() {
    local total=0
    for p in $(pids_of "$1"); do
        [ -r "/proc/$p/stat" ] || continue
        total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
    done
    echo "$total"
}
