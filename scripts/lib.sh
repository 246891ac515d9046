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
