#!/usr/bin/env bash
# End-to-end CPU cost per proxied HTTP/2 request: tidegate against nginx, both speaking HTTP/2 to the
# client (prior knowledge) and h2c to the upstream, on loopback, with h2load.
#
#   bash benches/h2.sh            # 5 rounds x (direct, tidegate, nginx) x 5 s: about 1.5 minutes
#   H2_SECONDS=3 H2_ROUNDS=3 bash benches/h2.sh
#   H2_NO_BUILD=1 bash benches/h2.sh        # use the target/release/tidegate already built
#
# Two nginx backends answer `200 hello` over h2c on 127.0.0.2:18091 and 127.0.0.3:18091. The proxy
# under test runs alone on CPU 0; h2load and the backends share CPU 1. tidegate uses
# `upstream.protocol: h2c`; nginx uses `grpc_pass` (its only HTTP/2 upstream module; it serves plain
# GETs too) to an upstream block with keepalive. For each proxy run the proxy's utime+stime (all
# threads; nginx master + worker) is read from /proc before and after, and divided by the requests
# h2load completed. Every process started here is stopped on exit. Same method as e2e.sh.
set -euo pipefail

SECONDS_PER_RUN=${H2_SECONDS:-5}
ROUNDS=${H2_ROUNDS:-5}
WARMUP=${H2_WARMUP:-1}
CLIENTS=${H2_CLIENTS:-10}  # h2load -c: connections
STREAMS=${H2_STREAMS:-10}  # h2load -m: concurrent streams per connection
# nginx's grpc_pass does not multiplex: each in-flight request holds an upstream connection of its
# own, and a finished one is closed unless the keepalive cache has room. With 100 streams in flight
# and `keepalive 64`, about 6% of requests opened a new upstream connection; 128 leaves none.
NGINX_KEEPALIVE=${H2_NGINX_KEEPALIVE:-128}

BACKEND_A=127.0.0.2:18091
BACKEND_B=127.0.0.3:18091
TIDEGATE=127.0.0.1:18090
TIDEGATE_ADMIN=127.0.0.1:18093
NGINX_PROXY=127.0.0.1:18092

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# shellcheck source=benches/lib.sh
source "$repo/benches/lib.sh" h2

need_tools() {
    install_missing h2load:nghttp2-client nginx:nginx taskset:util-linux curl:curl
}

# Polls URL over HTTP/2 with prior knowledge until it answers `200 hello`, for at most 10 s.
wait_ready() {
    local url=$1 got=
    for _ in $(seq 100); do
        got=$(curl -s --http2-prior-knowledge --max-time 1 -w ' %{http_code} HTTP/%{http_version}' "$url" || true)
        [ "$got" = "hello 200 HTTP/2" ] && return 0
        sleep 0.1
    done
    log "error: $url did not answer \`200 hello\` over HTTP/2 within 10 s (last: ${got:-nothing})"
    exit 1
}

to_us() { # h2load duration (e.g. 512us, 1.20ms, 2.00s) -> microseconds
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) m = 1; else if (v ~ /ms$/) m = 1000; else if (v ~ /s$/) m = 1000000; else m = 1
        printf "%.0f", n * m
    }'
}

# TCP connections this host opened (connect()), from /proc/net/snmp: around a counted run, h2load's
# CLIENTS plus the proxy's new upstream connections (plus anything else running on the machine).
active_opens() {
    awk '$1 == "Tcp:" { if (!col) { for (i = 2; i <= NF; i++) if ($i == "ActiveOpens") col = i } else print $col }' /proc/net/snmp
}

h2load_() { # h2load_ SECONDS URL: the load, on CPU 1
    taskset -c 1 h2load -c"$CLIENTS" -m"$STREAMS" -D"$1" "$2"
}

results=$work/results.tsv
: >"$results"

# run TARGET URL [PROXY_PID]: one h2load run; appends target, req/s, mean latency µs, cpu µs/req,
# succeeded requests, new upstream connections, errors.
run() {
    local target=$1 url=$2 pid=${3:-} out=$work/h2load-$1-$round.txt before=0 after=0 pids_ opens
    if [ -n "$pid" ]; then
        # An uncounted run first (e2e.sh found that a proxy measured straight after an idle spell
        # paid for waking up). A separate process rather than --warm-up-time, so that the CPU read
        # around the counted run covers exactly the requests h2load counts.
        h2load_ "$WARMUP" "$url" >/dev/null
        pids_=$(proxy_pids "$pid")
        # shellcheck disable=SC2086
        before=$(cpu_ticks $pids_)
    fi
    opens=$(active_opens)
    if ! h2load_ "$SECONDS_PER_RUN" "$url" >"$out" 2>&1; then
        log "error: h2load failed against $target:"
        tail -20 "$out" >&2
        exit 1
    fi
    if [ -n "$pid" ]; then
        # shellcheck disable=SC2086
        after=$(cpu_ticks $pids_)
    fi
    opens=$(($(active_opens) - opens - CLIENTS))
    if ! grep -q '^Application protocol: h2c' "$out"; then
        log "error: h2load did not speak h2c to $target:"
        tail -20 "$out" >&2
        exit 1
    fi
    # finished in 3.00s, 41277.33 req/s, 3.15MB/s
    # requests: 123832 total, 123932 started, 123832 done, 123832 succeeded, 0 failed, 0 errored, 0 timeout
    # status codes: 123832 2xx, 0 3xx, 0 4xx, 0 5xx
    # time for request:      170us    206.13ms     23.10ms     26.17ms    86.16%
    local succeeded rps mean errors cpu
    rps=$(awk '/^finished in/ {print $4}' "$out")
    succeeded=$(awk '/^requests:/ {print $8}' "$out")
    mean=$(to_us "$(awk '/^time for request:/ {print $6}' "$out")")
    errors=$(awk '
        /^requests:/ { for (i = 10; i <= NF; i += 2) if ($i + 0 > 0) printf "%s %s; ", $i, $(i + 1) }
        /^status codes:/ { for (i = 5; i <= NF; i += 2) if ($i + 0 > 0) printf "%s %s; ", $i, $(i + 1) }
    ' "$out" | sed 's/,//g')
    if [ "${succeeded:-0}" -eq 0 ]; then
        log "error: no request succeeded against $target:"
        tail -20 "$out" >&2
        exit 1
    fi
    if [ -n "$pid" ]; then
        cpu=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$succeeded" \
            'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
    else
        cpu=-
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$rps" "$mean" "$cpu" "$succeeded" "$opens" \
        "${errors:-none}" >>"$results"
    log "$(printf '%-9s %10s req/s  mean %6s us  cpu %6s us/req  new upstream conns %4s  errors: %s' \
        "$target" "$rps" "$mean" "$cpu" "$opens" "${errors:-none}")"
}

need_tools
if [ $((CLIENTS * STREAMS)) -gt "$NGINX_KEEPALIVE" ]; then
    log "note: $((CLIENTS * STREAMS)) streams in flight and nginx keepalive $NGINX_KEEPALIVE: nginx will open and close upstream connections during the runs"
fi
CLK_TCK=$(getconf CLK_TCK)

if [ -z "${H2_NO_BUILD:-}" ]; then
    log "building tidegate (release)"
    (cd "$repo" && cargo build --release --quiet --bin tidegate)
fi
[ -x "$repo/target/release/tidegate" ] || { log "error: no target/release/tidegate"; exit 1; }

# `listen ... http2` without ssl is HTTP/2 with prior knowledge only (h2c), which is what both
# proxies speak upstream.
backend_http='
    server {
        listen LISTEN http2;
        default_type text/plain;
        location / { return 200 "hello"; }
    }'
start_nginx backend-a 1 "${backend_http/LISTEN/$BACKEND_A}"
start_nginx backend-b 1 "${backend_http/LISTEN/$BACKEND_B}"
# grpc_pass does not multiplex: one upstream connection carries one stream at a time, and keepalive
# keeps finished ones for reuse.
start_nginx proxy 0 "
    upstream backends_h2 {
        server $BACKEND_A;
        server $BACKEND_B;
        keepalive $NGINX_KEEPALIVE;
        keepalive_requests 100000000;
    }
    server {
        listen $NGINX_PROXY http2;
        location / {
            grpc_pass grpc://backends_h2;
        }
    }"
nginx_pid=$started_pid

write_tidegate_config "$work/tidegate.yaml" "$TIDEGATE" "$TIDEGATE_ADMIN" "upstream: { protocol: h2c }"
RUST_LOG=warn taskset -c 0 "$repo/target/release/tidegate" proxy --config "$work/tidegate.yaml" \
    2>"$work/tidegate.log" &
tidegate_pid=$!
pids+=("$tidegate_pid")

wait_ready "http://$BACKEND_A/"
wait_ready "http://$BACKEND_B/"
wait_ready "http://$NGINX_PROXY/"
wait_ready "http://$TIDEGATE/"

load="h2load -c$CLIENTS -m$STREAMS -D$SECONDS_PER_RUN"
log "machine: $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), load $(cut -d' ' -f1-3 /proc/loadavg)"
tasks=("/proc/$tidegate_pid/task"/*)
log "tidegate threads: ${#tasks[@]}; nginx proxy workers: $(pgrep -cP "$nginx_pid")"
log "warm-up: 2 s against each proxy (opens the upstream connections)"
h2load_ 2 "http://$TIDEGATE/" >/dev/null
h2load_ 2 "http://$NGINX_PROXY/" >/dev/null

for round in $(seq "$ROUNDS"); do
    log "round $round/$ROUNDS ($load)"
    run direct "http://$BACKEND_A/"
    # Alternate which proxy goes first, so that drift in the machine's speed within a round
    # favours neither.
    if [ $((round % 2)) -eq 1 ]; then
        run tidegate "http://$TIDEGATE/" "$tidegate_pid"
        run nginx "http://$NGINX_PROXY/" "$nginx_pid"
    else
        run nginx "http://$NGINX_PROXY/" "$nginx_pid"
        run tidegate "http://$TIDEGATE/" "$tidegate_pid"
    fi
done

if ! kill -0 "$tidegate_pid" 2>/dev/null; then
    log "error: tidegate exited during the run; its log:"
    cat "$work/tidegate.log" >&2
    exit 1
fi
# tidegate's own account: every request should be a 200 from v1, with no upstream errors.
log "tidegate counters after the runs:"
curl -s --max-time 2 "http://$TIDEGATE_ADMIN/metrics" |
    grep -E '^tidegate_(requests_total|upstream_errors_total|retries_total)' | sed 's/^/  /' >&2 || true
upstream_conns() { # upstream_conns PATTERN: established connections to the backends' port from a process
    ss -Htnp state established "( dport = :${BACKEND_A##*:} )" | grep -c "$1" || true
}
log "upstream connections now: tidegate $(upstream_conns "pid=$tidegate_pid,"), nginx $(upstream_conns nginx)" \
    "(h2load: $CLIENTS connections x $STREAMS streams)"
if [ -s "$work/tidegate.log" ]; then
    log "tidegate log (warnings and errors):"
    head -20 "$work/tidegate.log" >&2
fi
for name in proxy backend-a backend-b; do
    if [ -s "$work/$name/logs/error.log" ]; then
        log "nginx $name error log:"
        head -10 "$work/$name/logs/error.log" >&2
    fi
done

# Median over rounds of every column; the ratio is tidegate's (or nginx's) CPU/request over nginx's.
echo
echo "median of $ROUNDS rounds, $load, proxy on CPU 0, h2load + backends on CPU 1, nginx keepalive $NGINX_KEEPALIVE"
sort -t$'\t' -k1,1 "$results" | awk -F'\t' '
    function median(list,   a, n, i, j, t) {
        n = split(list, a, " ")
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    { rps[$1] = rps[$1] " " $2; mean[$1] = mean[$1] " " $3; cpu[$1] = cpu[$1] " " $4; opens[$1] = opens[$1] " " $6
      if ($7 != "none") err[$1] = err[$1] $7 }
    END {
        ref = median(cpu["nginx"])
        printf "| %-8s | %10s | %17s | %14s | %14s |\n", "target", "requests/s", "mean latency (us)", "CPU us/request", "ratio to nginx"
        printf "|----------|-----------:|------------------:|---------------:|---------------:|\n"
        n = split("direct tidegate nginx", order, " ")
        for (k = 1; k <= n; k++) {
            t = order[k]
            c = t == "direct" ? "-" : sprintf("%.2f", median(cpu[t]))
            r = t == "direct" ? "-" : sprintf("%.2f", median(cpu[t]) / ref)
            printf "| %-8s | %10.0f | %17.0f | %14s | %14s |\n", t, median(rps[t]), median(mean[t]), c, r
        }
        printf "new upstream connections per counted run (median; connect()s on the machine minus h2load'"'"'s): tidegate %d, nginx %d\n", median(opens["tidegate"]), median(opens["nginx"])
        for (t in err) printf "errors reported by h2load for %s: %s\n", t, err[t]
    }'
# The two proxies of one round ran back to back, so their ratio cancels most of the machine's drift
# between rounds; its median is the number to quote on a noisy machine.
awk -F'\t' '
    $1 == "tidegate" { t[++nt] = $4 }
    $1 == "nginx" { g[++ng] = $4 }
    END {
        n = nt < ng ? nt : ng
        for (i = 1; i <= n; i++) { r[i] = t[i] / g[i]; if (r[i] <= 1) wins++ }
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (r[j] < r[i]) { x = r[i]; r[i] = r[j]; r[j] = x }
        median = n % 2 ? r[(n + 1) / 2] : (r[n / 2] + r[n / 2 + 1]) / 2
        printf "per-round ratio tidegate/nginx (CPU us/request): median %.3f, range %.3f-%.3f, tidegate at or below nginx in %d of %d rounds\n", median, r[1], r[n], wins, n
    }' "$results"
echo
echo "every run:"
{
    printf 'target\trequests/s\tmean_us\tcpu_us/req\tsucceeded\tnew_upstream_conns\th2load_errors\n'
    cat "$results"
} | column -t -s$'\t'
