#!/usr/bin/env bash
# Benchmarks proxy_server against HAProxy, nginx and Apache httpd (worker MPM, the thread-pool
# blocking design like ours) on loopback, in the same run, alternating contestants round by
# round, and writes a Markdown table with the raw data to bench/results/. CPU is summed over
# every process of a contestant (nginx workers, Apache children).
#
#   scripts/bench.sh            full run (about 15 minutes): 3 rounds, 5 s per measurement
#   scripts/bench.sh --quick    smoke run (about 2 minutes): 1 round, 3 s per measurement
#   scripts/bench.sh --only dashboard,https   only those sections (keepalive, close, dashboard,
#                               https, bulk, idle); ROUNDS=N overrides the number of rounds
#
# Every load is bounded in time (wrk -d, iperf3 -t) and goes to 127.0.0.1 only. Processes are
# started here and stopped by their pids.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

QUICK=0
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --only) ONLY=",$2,"; shift ;;
        *) echo "usage: scripts/bench.sh [--quick] [--only SECTION[,SECTION...]]" >&2; exit 2 ;;
    esac
    shift
done
want() { [ -z "$ONLY" ] || [[ "$ONLY" == *",$1,"* ]]; }
ROUNDS_WANTED=${ROUNDS:-}
if [ $QUICK = 1 ]; then
    ROUNDS=1; DUR=3; CONCURRENCY="16 256"; IDLE=1000; BULK_T=2
else
    ROUNDS=3; DUR=5; CONCURRENCY="1 16 64 256 1000"; IDLE=9000; BULK_T=5
fi
ROUNDS=${ROUNDS_WANTED:-$ROUNDS}

# --- tools -------------------------------------------------------------------------------
need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx-light)
command -v haproxy >/dev/null || need+=(haproxy)
command -v iperf3 >/dev/null || need+=(iperf3)
command -v apache2 >/dev/null || need+=(apache2)
command -v openssl >/dev/null || need+=(openssl)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]} (Debian packages) for the benchmark"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
cargo build --release --bins -q
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

BACKEND=$(free_port); OURS=$(free_port); NGINX=$(free_port); HAPROXY=$(free_port)
IPERF=$(free_port); OURS_TCP=$(free_port); HAPROXY_TCP=$(free_port); OURS_ADMIN=$(free_port)
OURS_TLS=$(free_port); NGINX_TLS=$(free_port); HAPROXY_TLS=$(free_port); APACHE=$(free_port)

# --- one certificate for every TLS contestant (ECDSA P-256, as a modern site serves) ---------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$WORK/tls.key" -out "$WORK/tls.pem" 2>/dev/null
cat "$WORK/tls.pem" "$WORK/tls.key" >"$WORK/tls-haproxy.pem"

# --- contestants -------------------------------------------------------------------------
nginx_backend_conf "$WORK" "$BACKEND"
cat >"$WORK/nginx.conf" <<CONF
worker_processes 2; daemon off; pid $WORK/nginx.pid; error_log $WORK/nginx.err;
worker_rlimit_nofile 20000;
events { worker_connections 20000; }
http { access_log off; keepalive_requests 10000000; keepalive_timeout 300s;
  upstream app { least_conn; server 127.0.0.1:$BACKEND; keepalive 64; }
  server { listen 127.0.0.1:$NGINX backlog=4096;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  server { listen 127.0.0.1:$NGINX_TLS ssl backlog=4096;
    ssl_certificate $WORK/tls.pem; ssl_certificate_key $WORK/tls.key; ssl_session_cache off; ssl_session_tickets off;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; } } }
CONF
cat >"$WORK/haproxy.cfg" <<CONF
global
    nbthread 2
    maxconn 9500
defaults
    timeout connect 5s
    timeout client 300s
    timeout server 300s
frontend http_in
    mode http
    bind 127.0.0.1:$HAPROXY
    default_backend app
backend app
    mode http
    balance leastconn
    http-reuse always
    server s1 127.0.0.1:$BACKEND maxconn 10000
frontend https_in
    mode http
    bind 127.0.0.1:$HAPROXY_TLS ssl crt $WORK/tls-haproxy.pem no-tls-tickets
    default_backend app
frontend tcp_in
    mode tcp
    bind 127.0.0.1:$HAPROXY_TCP
    default_backend tcp_app
backend tcp_app
    mode tcp
    balance leastconn
    server s1 127.0.0.1:$IPERF
CONF
# Apache httpd 2.4, worker MPM, as its users run a balancer: mod_proxy_balancer with
# bybusyness (its least-connections) and pooled backend connections (enablereuse); threads
# for every connection up to c=1000 started up front, as ours are; keep-alive unbounded.
APACHE_MODS=/usr/lib/apache2/modules
cat >"$WORK/apache.conf" <<CONF
ServerRoot /etc/apache2
ServerName localhost
PidFile $WORK/apache.pid
ErrorLog $WORK/apache.err
LogLevel warn
Mutex file:$WORK default
DefaultRuntimeDir $WORK
User www-data
Group www-data
LoadModule mpm_worker_module $APACHE_MODS/mod_mpm_worker.so
LoadModule authz_core_module $APACHE_MODS/mod_authz_core.so
LoadModule slotmem_shm_module $APACHE_MODS/mod_slotmem_shm.so
LoadModule proxy_module $APACHE_MODS/mod_proxy.so
LoadModule proxy_http_module $APACHE_MODS/mod_proxy_http.so
LoadModule proxy_balancer_module $APACHE_MODS/mod_proxy_balancer.so
LoadModule lbmethod_bybusyness_module $APACHE_MODS/mod_lbmethod_bybusyness.so
Listen 127.0.0.1:$APACHE
ListenBacklog 4096
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 300
ServerLimit 20
StartServers 20
ThreadLimit 64
ThreadsPerChild 64
MaxRequestWorkers 1280
MinSpareThreads 64
MaxSpareThreads 1280
MaxConnectionsPerChild 0
<Proxy "balancer://app">
    BalancerMember "http://127.0.0.1:$BACKEND" enablereuse=on keepalive=on
    ProxySet lbmethod=bybusyness
</Proxy>
ProxyPass "/" "balancer://app/"
CONF
ours_config() { # mode port backend [admin]
    # The shipped defaults, as a user runs it: only where to listen and what to balance.
    cat <<CONF
[proxy]
listen = 127.0.0.1:$2
mode = $1
log_file =
log_level = warn
[admin]
listen = ${4:-}
[backends]
b1 = 127.0.0.1:$3
CONF
}
# The admin listener is on (as with a dashboard in use), for the dashboard row below.
ours_config http "$OURS" "$BACKEND" "127.0.0.1:$OURS_ADMIN" >"$WORK/ours.ini"
# Idle clients, HTTP and TCP, park without a worker (src/park/): the defaults hold them all.
ours_config http "$OURS" "$BACKEND" >"$WORK/ours-idle.ini"
ours_config tcp "$OURS_TCP" "$IPERF" >"$WORK/ours-tcp.ini"
ours_config tcp "$OURS_TCP" "$BACKEND" >"$WORK/ours-tcp-idle.ini"
ours_config http "$OURS_TLS" "$BACKEND" >"$WORK/ours-tls.ini"
printf '[tls]\ncert = %s\nkey = %s\n' "$WORK/tls.pem" "$WORK/tls.key" >>"$WORK/ours-tls.ini"

start() { # name port command...
    local name=$1 port=$2; shift 2
    "$@" >"$WORK/$name.out" 2>&1 &
    local pid=$!
    PIDS+=("$pid")
    wait_port 127.0.0.1 "$port" 100 || { cat "$WORK/$name.out" >&2; exit 1; }
    eval "PID_$name=$pid"
}
stop() { # name
    local var="PID_$1"; local pid=${!var:-}
    [ -n "$pid" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null || true
}

start backend "$BACKEND" nginx -c "$WORK/backend.conf"
start ours "$OURS" target/release/proxy_server --config "$WORK/ours.ini"
start nginx "$NGINX" nginx -c "$WORK/nginx.conf"
start haproxy "$HAPROXY" haproxy -f "$WORK/haproxy.cfg"
start apache "$APACHE" apache2 -DFOREGROUND -f "$WORK/apache.conf"
start iperf "$IPERF" iperf3 -s -p "$IPERF" -B 127.0.0.1
start ourstcp "$OURS_TCP" target/release/proxy_server --config "$WORK/ours-tcp.ini"
start ourstls "$OURS_TLS" target/release/proxy_server --config "$WORK/ours-tls.ini"

# --- measuring ---------------------------------------------------------------------------
RAW="$WORK/raw.tsv"
echo -e "# test\tparam\tcontestant\tround\tmetric\tvalue" >"$RAW"
record() { echo -e "$1\t$2\t$3\t$4\t$5\t$6" >>"$RAW"; }

to_ms() { # wrk latency like 1.23ms / 456.00us / 1.2s
    python3 -c "
v='$1'
for u, f in (('us', 0.001), ('ms', 1.0), ('s', 1000.0)):
    if v.endswith(u):
        print(float(v[:-len(u)]) * f); break
else:
    print('nan')"
}
TICKS=$(getconf CLK_TCK)
declare -A PORT=([direct]=$BACKEND [ours]=$OURS [nginx]=$NGINX [haproxy]=$HAPROXY [apache]=$APACHE [ourstcp]=$OURS_TCP)
declare -A PROC=([direct]=backend [ours]=ours [nginx]=nginx [haproxy]=haproxy [apache]=apache [ourstcp]=ourstcp)
# HTTPS rows: the same contestants on their TLS listeners (TLS=1 while they run).
declare -A TLS_PORT=([ours]=$OURS_TLS [nginx]=$NGINX_TLS [haproxy]=$HAPROXY_TLS)
declare -A TLS_PROC=([ours]=ourstls [nginx]=nginx [haproxy]=haproxy)
TLS=0

wrk_run() { # test param who round extra-header
    local test=$1 c=$2 who=$3 round=$4 header=${5:-}
    local var="PID_${PROC[$who]}" url="http://127.0.0.1:${PORT[$who]}/"
    if [ "$TLS" = 1 ]; then var="PID_${TLS_PROC[$who]}"; url="https://127.0.0.1:${TLS_PORT[$who]}/"; fi
    local pid=${!var}
    local threads=2; [ "$c" -lt 2 ] && threads=1
    local before after out
    before=$(cpu_ticks "$pid")
    if [ -n "$header" ]; then
        out=$(wrk -t"$threads" -c"$c" -d"${DUR}s" --latency -H "$header" "$url" 2>&1)
    else
        out=$(wrk -t"$threads" -c"$c" -d"${DUR}s" --latency "$url" 2>&1)
    fi
    after=$(cpu_ticks "$pid")
    local rps reqs p50 p99 errors
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    p50=$(to_ms "$(awk '$1 == "50%" {print $2}' <<<"$out")")
    p99=$(to_ms "$(awk '$1 == "99%" {print $2}' <<<"$out")")
    errors=$(grep -E "Socket errors|Non-2xx" <<<"$out" | tr -s ' ' | paste -sd';' || true)
    record "$test" "$c" "$who" "$round" rps "${rps:-0}"
    record "$test" "$c" "$who" "$round" p50_ms "$p50"
    record "$test" "$c" "$who" "$round" p99_ms "$p99"
    if [ "$who" != direct ] && [ -n "$reqs" ] && [ "$reqs" -gt 0 ] && [ "$after" -gt "$before" ]; then
        # Requests served per second of CPU, summed over every process of the contestant.
        record "$test" "$c" "$who" "$round" req_per_cpu_s "$(python3 -c "print($reqs / (($after - $before) / $TICKS))")"
    fi
    printf "  %-10s %-7s c=%-5s round %s: %10s req/s  p50 %8s ms  p99 %8s ms %s\n" "$test" "$who" "$c" "$round" "${rps:-?}" "$p50" "$p99" "${errors:+($errors)}"
}

if want keepalive; then
echo "== HTTP keep-alive (wrk ${DUR}s per run, $ROUNDS round(s), contestants alternating)"
for c in $CONCURRENCY; do
    # Warm-up, not recorded: first connections, worker threads and backend pools start cold.
    for who in direct ours haproxy nginx apache; do
        wrk -t1 -c"$c" -d1s "http://127.0.0.1:${PORT[$who]}/" >/dev/null 2>&1 || true
    done
    for round in $(seq "$ROUNDS"); do
        for who in direct ours haproxy nginx apache; do wrk_run keepalive "$c" "$who" "$round"; done
    done
done
fi
if want close; then
echo "== New connection per request (Connection: close, c=64)"
for who in ours haproxy nginx apache; do
    wrk -t1 -c64 -d1s -H "Connection: close" "http://127.0.0.1:${PORT[$who]}/" >/dev/null 2>&1 || true
done
for round in $(seq "$ROUNDS"); do
    for who in direct ours haproxy nginx apache; do wrk_run close 64 "$who" "$round" "Connection: close"; done
done

fi
if want dashboard; then
echo "== Dashboard: one /events viewer open under full load (c=64) vs none (issue #12: <= 3% fewer req/s)"
for round in $(seq "$ROUNDS"); do
    wrk_run dash_off 64 ours "$round"
    rm -f "$WORK/viewer.out"
    curl -sN "http://127.0.0.1:$OURS_ADMIN/events" >"$WORK/viewer.out" 2>/dev/null &
    viewer=$!
    for _ in $(seq 100); do grep -q '^data:' "$WORK/viewer.out" 2>/dev/null && break; sleep 0.05; done
    wrk_run dash_on 64 ours "$round"
    kill "$viewer" 2>/dev/null; wait "$viewer" 2>/dev/null || true
    printf "  dashboard  viewer received %s events\n" "$(grep -c '^data:' "$WORK/viewer.out" || echo 0)"
done

fi
if want https; then
echo "== HTTPS: keep-alive requests over TLS (c=64), and a new TLS connection per request (c=64)"
TLS=1
for who in ours haproxy nginx; do
    wrk -t1 -c64 -d1s "https://127.0.0.1:${TLS_PORT[$who]}/" >/dev/null 2>&1 || true
done
for round in $(seq "$ROUNDS"); do
    for who in ours haproxy nginx; do wrk_run tls_keepalive 64 "$who" "$round"; done
    # No session resumption anywhere (tickets and caches off): every request is a full handshake.
    for who in ours haproxy nginx; do wrk_run tls_close 64 "$who" "$round" "Connection: close"; done
done
TLS=0

fi
if want bulk; then
echo "== TCP bulk throughput (iperf3 ${BULK_T}s)"
for streams in 1 8; do
    for round in $(seq "$ROUNDS"); do
        for who in direct ours haproxy; do
            case $who in direct) port=$IPERF ;; ours) port=$OURS_TCP ;; haproxy) port=$HAPROXY_TCP ;; esac
            gbps=$(iperf3 -c 127.0.0.1 -p "$port" -t "$BULK_T" -P "$streams" -J 2>/dev/null |
                python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["end"]["sum_received"]["bits_per_second"]/1e9)' 2>/dev/null || echo 0)
            record bulk "$streams" "$who" "$round" gbps "$gbps"
            printf "  bulk       %-7s streams=%s round %s: %6.2f Gbit/s\n" "$who" "$streams" "$round" "$gbps"
        done
    done
done

fi
if want idle; then
echo "== $IDLE idle keep-alive connections held through each proxy"
stop ours
start ours "$OURS" target/release/proxy_server --config "$WORK/ours-idle.ini"
stop ourstcp
start ourstcp "$OURS_TCP" target/release/proxy_server --config "$WORK/ours-tcp-idle.ini"
for who in ours ourstcp haproxy nginx; do
    var="PID_${PROC[$who]}"; pid=${!var}
    rm -f "$WORK/ready" "$WORK/go"
    python3 scripts/bench_idle.py 127.0.0.1 "${PORT[$who]}" "$IDLE" "$WORK/ready" "$WORK/go" >"$WORK/idle.out" 2>&1 &
    idle_pid=$!
    for _ in $(seq 1200); do [ -f "$WORK/ready" ] && break; sleep 0.1; done
    # Measured once every connection has been idle 2 s, for every contestant alike: idle is
    # the steady state being measured (ours gives memory back after 0.5 s).
    sleep 2
    rss=0; threads=0
    for p in $(pids_of "$pid"); do
        rss=$((rss + $(awk '/^VmRSS:/ {print $2}' "/proc/$p/status")))
        threads=$((threads + $(awk '/^Threads:/ {print $2}' "/proc/$p/status")))
    done
    touch "$WORK/go"
    wait "$idle_pid" || true
    answered=$(awk '/answered/ {print $6}' "$WORK/idle.out")
    record idle "$IDLE" "$who" 1 answered "${answered:-0}"
    record idle "$IDLE" "$who" 1 rss_mib "$(python3 -c "print($rss / 1024)")"
    record idle "$IDLE" "$who" 1 threads "$threads"
    printf "  idle       %-7s %s: %s; RSS %d MiB, %d threads\n" "$who" "$IDLE" "$(cat "$WORK/idle.out")" $((rss / 1024)) "$threads"
done

fi
# --- report ------------------------------------------------------------------------------
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
KIND=full; [ $QUICK = 1 ] && KIND=quick
OUT="bench/results/$STAMP-$KIND"
mkdir -p bench/results
cp "$RAW" "$OUT.tsv"
{
    echo "# Benchmark $STAMP ($KIND)"
    echo
    echo "Machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr);" \
        "$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
    echo "Versions: $(nginx -v 2>&1 | cut -d/ -f2), HAProxy $(haproxy -v | awk 'NR==1 {print $3}'), $(apache2 -v | awk -F'[/ ]' 'NR==1 {print "Apache " $4}'), $(wrk -v 2>&1 | head -1 | awk '{print $1, $2}'), proxy_server $(target/release/proxy_server --version | awk '{print $2}')"
    echo "Method: one nginx backend (return 200, 1 worker, access log off) for everyone; wrk -t2;" \
        "$ROUNDS round(s) of ${DUR}s, contestants alternating within each round; medians."
    echo
    python3 scripts/bench_report.py "$RAW"
} >"$OUT.md"
echo
cat "$OUT.md"
echo "written: $OUT.md and $OUT.tsv"
