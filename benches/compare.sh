#!/usr/bin/env bash
# tidegate beside nginx and HAProxy, every figure the performance issue asks for, in one command:
#
#   bash benches/compare.sh                  # about 12 minutes on 2 cores
#   CMP_ROUNDS=5 CMP_SECONDS=5 bash benches/compare.sh
#   CMP_CONNECTIONS="64" CMP_LAYOUTS="alone" bash benches/compare.sh   # a subset
#   CMP_NO_BUILD=1 bash benches/compare.sh   # use the target/release/tidegate already built
#
# Installs nginx, HAProxy, wrk, h2load and curl from Debian if missing. Loopback only (ports
# 18201-18209 on 127.0.0.1-3); every process it starts is stopped on exit.
#
# Each proxy runs one worker (tidegate: TOKIO_WORKER_THREADS=1; nginx: worker_processes 1;
# HAProxy: nbthread 1) with keep-alive to two nginx backends (`return 200 "hello"`). CPU per
# request is the proxy's utime+stime (all threads and processes) from /proc over a wrk run,
# divided by the requests wrk completed; a 1 s uncounted warm-up precedes each run, and the three
# proxies take turns within each round in a rotating order. Ratios are per round, to nginx's run
# of the same round, and the median is printed (the machine's speed drifts between rounds).
#
# Layouts (2 cores): `alone` = the proxy alone on CPU 0, wrk and the backends on CPU 1;
# `shared` = wrk alone on CPU 0, the proxy and the backends on CPU 1.
# Then: HTTP/2 clients (h2load -c10 -m10, HTTP/1.1 upstreams) in the `alone` layout; p99 at a
# fixed 5,000 req/s (tidegate loadtest, 64 connections, latency from the intended start); RSS idle
# and after the 256-connection runs; and tidegate with 2 workers beside 1, nothing pinned.
set -euo pipefail

ROUNDS=${CMP_ROUNDS:-3}
SECONDS_PER_RUN=${CMP_SECONDS:-5}
CONNECTIONS=${CMP_CONNECTIONS:-"32 64 256"}
LAYOUTS=${CMP_LAYOUTS:-"alone shared"}
FIXED_RATE=${CMP_FIXED_RATE:-5000}

BACKEND_A=127.0.0.2:18201
BACKEND_B=127.0.0.3:18201
declare -A ADDR=(
    [tidegate]=127.0.0.1:18202
    [nginx]=127.0.0.1:18203
    [haproxy]=127.0.0.1:18204
    [tidegate2]=127.0.0.1:18206
)
declare -A URL H2_URL
for p in "${!ADDR[@]}"; do URL[$p]=http://${ADDR[$p]}/; done
# HTTP/2 with prior knowledge: tidegate on its one listener, nginx and HAProxy on a second one.
H2_URL=([tidegate]=${URL[tidegate]} [nginx]=http://127.0.0.1:18209/ [haproxy]=http://127.0.0.1:18210/)
TIDEGATE_ADMIN=127.0.0.1:18205
TIDEGATE2_ADMIN=127.0.0.1:18207
PROXIES=(tidegate nginx haproxy)

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# shellcheck source=benches/lib.sh
source "$repo/benches/lib.sh" compare

install_missing wrk:wrk nginx:nginx haproxy:haproxy h2load:nghttp2-client taskset:util-linux \
    curl:curl python3:python3
CLK_TCK=$(getconf CLK_TCK)
if [ -z "${CMP_NO_BUILD:-}" ]; then
    log "building tidegate (release)"
    (cd "$repo" && cargo build --release --quiet --bin tidegate)
fi
tidegate_bin=$repo/target/release/tidegate

wait_ready() { # URL [curl options]: polls until 200, for at most 10 s
    local url=$1 code=
    shift
    for _ in $(seq 100); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$@" "$url" || true)
        [ "$code" = 200 ] && return 0
        sleep 0.1
    done
    log "error: $url did not answer 200 within 10 s (last status: ${code:-none})"
    exit 1
}

# pin CPUS PID...: moves every thread of each process (and its children) to CPUS.
pin() {
    local cpus=$1 pid child
    shift
    for pid in "$@"; do
        for child in $(proxy_pids "$pid"); do
            taskset -a -p -c "$cpus" "$child" >/dev/null
        done
    done
}

rss_kib() { # PID...: summed VmRSS (or the field given in RSS_FIELD) of each process and children
    local total=0 pid child v
    for pid in "$@"; do
        for child in $(proxy_pids "$pid"); do
            v=$(awk -v f="${RSS_FIELD:-VmRSS}:" '$1 == f { print $2 }' "/proc/$child/status")
            total=$((total + ${v:-0}))
        done
    done
    echo "$total"
}

backend_http='server { listen LISTEN; default_type text/plain; location / { return 200 "hello"; } }'
start_nginx backend-a 1 "${backend_http/LISTEN/$BACKEND_A}"
backend_a_pid=$started_pid
start_nginx backend-b 1 "${backend_http/LISTEN/$BACKEND_B}"
backend_b_pid=$started_pid

start_nginx proxy 0 "
    upstream backends {
        server $BACKEND_A;
        server $BACKEND_B;
        keepalive 512;
        keepalive_requests 100000000;
    }
    server {
        listen ${ADDR[nginx]};
        listen 127.0.0.1:18209 http2;
        location / {
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"
declare -A PID=([nginx]=$started_pid)

cat >"$work/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 8000
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    http-reuse always
frontend fe
    bind ${ADDR[haproxy]}
    bind 127.0.0.1:18210 proto h2
    default_backend be
backend be
    balance roundrobin
    server a $BACKEND_A
    server b $BACKEND_B
EOF
taskset -c 0 haproxy -db -f "$work/haproxy.cfg" >"$work/haproxy.log" 2>&1 &
PID[haproxy]=$!
pids+=("${PID[haproxy]}")

start_tidegate() { # NAME WORKERS LISTEN ADMIN CPUS
    write_tidegate_config "$work/$1.yaml" "$3" "$4"
    TOKIO_WORKER_THREADS=$2 RUST_LOG=warn taskset -c "$5" "$tidegate_bin" proxy \
        --config "$work/$1.yaml" 2>"$work/$1.log" &
    PID[$1]=$!
    pids+=("$!")
}
start_tidegate tidegate 1 "${ADDR[tidegate]}" "$TIDEGATE_ADMIN" 0

wait_ready "http://$BACKEND_A/"
wait_ready "http://$BACKEND_B/"
for p in "${PROXIES[@]}"; do wait_ready "${URL[$p]}"; done
idle_rss=$(rss_kib "${PID[tidegate]}")

log "machine: $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo))"

results=$work/results.tsv
: >"$results"

# measure KIND LAYOUT CONNS PROXY ROUND: one wrk (or h2load) run; appends a row to results.
measure() {
    local kind=$1 layout=$2 conns=$3 proxy=$4 round=$5 pid=${PID[$4]} out=$work/out.txt
    local before after requests rps load_cpu
    load_cpu=$([ "$layout" = shared ] && echo 0 || echo 1)
    [ "$layout" = free ] && load_cpu=0-1
    if [ "$kind" = h2 ]; then
        taskset -c "$load_cpu" h2load -c10 -m10 -D1 "${H2_URL[$proxy]}" >/dev/null
        # shellcheck disable=SC2046
        before=$(cpu_ticks $(proxy_pids "$pid"))
        taskset -c "$load_cpu" h2load -c10 -m10 -D"$SECONDS_PER_RUN" "${H2_URL[$proxy]}" >"$out" 2>&1
        # shellcheck disable=SC2046
        after=$(cpu_ticks $(proxy_pids "$pid"))
        grep -q '^Application protocol: h2c' "$out" || { log "error: no h2c to $proxy"; cat "$out" >&2; exit 1; }
        requests=$(awk '/^status codes:/ { print $3 }' "$out")
        rps=$(awk '/^finished in/ { print $4 }' "$out")
    else
        taskset -c "$load_cpu" wrk -t1 -c"$conns" -d1s "${URL[$proxy]}" >/dev/null
        # shellcheck disable=SC2046
        before=$(cpu_ticks $(proxy_pids "$pid"))
        taskset -c "$load_cpu" wrk -t1 -c"$conns" -d"${SECONDS_PER_RUN}s" "${URL[$proxy]}" >"$out"
        # shellcheck disable=SC2046
        after=$(cpu_ticks $(proxy_pids "$pid"))
        requests=$(awk '/requests in/ { print $1 }' "$out")
        rps=$(awk '/^Requests\/sec/ { print $2 }' "$out")
        if grep -qE 'Non-2xx|Socket errors' "$out"; then
            log "warning: $proxy: $(grep -E 'Non-2xx|Socket errors' "$out" | tr -s ' ')"
        fi
    fi
    local cpu
    cpu=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$requests" 'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$kind/$layout/$conns" "$round" "$proxy" "$rps" "$cpu" "$requests" >>"$results"
    log "$(printf '%-22s round %s  %-9s %9.0f req/s  %6s us/req' "$kind/$layout/$conns" "$round" "$proxy" "$rps" "$cpu")"
}

# set_layout LAYOUT: pins the proxies and the backends.
set_layout() {
    local proxy_cpu=0 backend_cpu=1
    [ "$1" = shared ] && proxy_cpu=1
    for p in "${PROXIES[@]}"; do pin "$proxy_cpu" "${PID[$p]}"; done
    pin "$backend_cpu" "$backend_a_pid" "$backend_b_pid"
}

# series KIND LAYOUT CONNS: ROUNDS rounds of every proxy, rotating who goes first.
series() {
    local round i n=${#PROXIES[@]}
    for round in $(seq "$ROUNDS"); do
        for i in $(seq 0 $((n - 1))); do
            measure "$1" "$2" "$3" "${PROXIES[$(((i + round) % n))]}" "$round"
        done
    done
}

for layout in $LAYOUTS; do
    set_layout "$layout"
    for conns in $CONNECTIONS; do
        series http1 "$layout" "$conns"
    done
done
peak_rss=$(RSS_FIELD=VmHWM rss_kib "${PID[tidegate]}")
after_rss=$(rss_kib "${PID[tidegate]}")

set_layout alone
series h2 alone 100

# Fixed rate: p99 from the intended start, the load generator on CPU 1 with the backends.
fixed=()
for p in "${PROXIES[@]}"; do
    taskset -c 1 "$tidegate_bin" loadtest "${URL[$p]}" --rate "$FIXED_RATE" --duration 10s \
        --connections 64 --quiet --json "$work/fixed-$p.json" >/dev/null || true
    fixed+=("$(python3 - "$work/fixed-$p.json" "$p" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
l = d["latency"] or {}
us = lambda k: l.get(k, 0) * 1000
print(f"| {sys.argv[2]} | {d['requests']} | {d['failed']} | {us('p50_ms'):.0f} | {us('p99_ms'):.0f} | {us('max_ms'):.0f} |")
PY
)")
done

# Two workers beside one, nothing pinned (the proxy, wrk and the backends share both cores).
start_tidegate tidegate2 2 "${ADDR[tidegate2]}" "$TIDEGATE2_ADMIN" 0-1
wait_ready "${URL[tidegate2]}"
pin 0-1 "${PID[tidegate]}" "$backend_a_pid" "$backend_b_pid"
saved=("${PROXIES[@]}")
PROXIES=(tidegate tidegate2)
series http1 free 64
PROXIES=("${saved[@]}")

python3 - "$results" "$ROUNDS" <<'PY'
import sys, statistics
from collections import defaultdict
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1])]
runs = defaultdict(dict)   # (series, round) -> proxy -> (rps, cpu)
for series, rnd, proxy, rps, cpu, _ in rows:
    runs[(series, rnd)][proxy] = (float(rps), float(cpu))
table = defaultdict(lambda: defaultdict(list))
for (series, _), by in runs.items():
    ref = by.get("nginx", by.get("tidegate"))
    for proxy, (rps, cpu) in by.items():
        table[series][proxy].append((rps, cpu, cpu / ref[1]))
print("\n| load | layout | conns | proxy | req/s | CPU µs/req | ratio to nginx (median per round) |")
print("|---|---|---:|---|---:|---:|---:|")
for series in sorted(table, key=lambda s: (s.split("/")[0] != "http1", s.split("/")[1], int(s.split("/")[2]))):
    kind, layout, conns = series.split("/")
    for proxy in sorted(table[series], key=lambda p: ["tidegate", "tidegate2", "nginx", "haproxy"].index(p)):
        v = table[series][proxy]
        med = lambda i: statistics.median(x[i] for x in v)
        label = {"tidegate2": "tidegate, 2 workers", "tidegate": "tidegate" + (", 1 worker" if layout == "free" else "")}.get(proxy, proxy)
        ratio = f"{med(2):.2f}" if "nginx" in table[series] else f"{med(2):.2f} (to 1 worker)"
        print(f"| {kind} | {layout} | {conns} | {label} | {med(0):.0f} | {med(1):.2f} | {ratio} |")
PY
printf '\nFixed %s req/s, 64 connections (tidegate loadtest on CPU 1 with the backends; latency from the intended start):\n\n' "$FIXED_RATE"
printf '| proxy | requests | failed | p50 µs | p99 µs | max µs |\n|---|---:|---:|---:|---:|---:|\n'
printf '%s\n' "${fixed[@]}"
printf '\ntidegate RSS: idle %s KiB; after the wrk runs %s KiB, peak %s KiB\n' \
    "$idle_rss" "$after_rss" "$peak_rss"
printf '%s, %s cores (%s), %s rounds x %s s per run\n' "$(date -u +%Y-%m-%d)" "$(nproc)" \
    "$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)" "$ROUNDS" "$SECONDS_PER_RUN"
