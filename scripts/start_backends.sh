#!/usr/bin/env bash
# Starts dummy servers on ports 9090-9099 (or the ports given) in the background.
# Each appends to logs/backend_<port>.log; their pids go to logs/backends.pids for
# stop_backends.sh. Then checks each one: ready once it has logged "listening on" and its port
# accepts a connection, failed if it exits first (or is still not listening after 10 s).
# Names every port that failed, with the reason from its log, and exits 1 if any did.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"
[ -x ./dummy_server ] || scripts/build.sh
ports=("$@")
[ ${#ports[@]} -gt 0 ] || ports=($(seq 9090 9099))
mkdir -p logs

declare -A pid_of offset_of
for port in "${ports[@]}"; do
    log="logs/backend_$port.log"
    offset_of[$port]=$(stat -c %s "$log" 2>/dev/null || echo 0)
    # The log is the dummy's stderr rather than its own log file, so that an error before
    # logging starts (a port in use, a bad argument) lands in it too.
    ./dummy_server "$port" --log-dir '' 2>>"$log" &
    pid_of[$port]=$!
    echo $! >>"$PIDS"
done

# new_log PORT: what PORT's log gained since this script started its dummy.
new_log() {
    tail -c +"$((${offset_of[$1]} + 1))" "logs/backend_$1.log" 2>/dev/null || true
}

# why_failed PORT: the dummy's error line, or failing that its last line.
why_failed() {
    local text
    text=$(new_log "$1")
    { grep -E '^(dummy_server|error):' <<<"$text" || grep -v '^[[:space:]]*$' <<<"$text" || true; } | tail -n 1
}

failed=()
for port in "${ports[@]}"; do
    pid=${pid_of[$port]}
    state=slow
    for _ in $(seq 100); do
        # A dead child stays a zombie until this script exits; is_ours sees its empty cmdline.
        if ! is_ours "$pid" dummy_server; then
            state=died
            break
        fi
        if new_log "$port" | grep -q "listening on" && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            state=ready
            break
        fi
        sleep 0.1
    done
    case $state in
    ready) ;;
    died)
        failed+=("$port")
        reason=$(why_failed "$port")
        echo "port $port: dummy_server exited: ${reason:-(nothing in logs/backend_$port.log)}" >&2
        ;;
    *)
        failed+=("$port")
        echo "port $port: dummy_server (pid $pid) not listening after 10 s; see logs/backend_$port.log" >&2
        ;;
    esac
done

started=$((${#ports[@]} - ${#failed[@]}))
if [ ${#failed[@]} -gt 0 ]; then
    echo "started $started of ${#ports[@]} dummy servers; failed on port(s) ${failed[*]}" >&2
    exit 1
fi
echo "started ${#ports[@]} dummy servers on ports ${ports[*]} (pids in logs/backends.pids)"
