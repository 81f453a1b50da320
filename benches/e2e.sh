#!/usr/bin/env bash
# End-to-end CPU cost per proxied request: tidegate against an nginx reverse proxy, on loopback.
#
#   bash benches/e2e.sh            # 9 rounds x (direct, tidegate, nginx) x 5 s: about 3 minutes
#   E2E_SECONDS=5 E2E_ROUNDS=2 bash benches/e2e.sh
#   E2E_PERF=/tmp/prof bash benches/e2e.sh   # also: perf record each proxy in one extra, uncounted run
#   E2E_NO_BUILD=1 bash benches/e2e.sh        # use the target/release/tidegate already built
#   E2E_TIDEGATE_YAML='access_log: { path: /tmp/e2e-access.log }' bash benches/e2e.sh
#                                             # extra top-level keys for tidegate's config
#
# Two nginx backends answer `200 hello` on 127.0.0.2:18081 and 127.0.0.3:18081. The proxy under test
# runs alone on CPU 0; wrk and the backends share CPU 1. For each proxy run the proxy's utime+stime
# (all threads; nginx master + worker) is read from /proc before and after, and divided by the
# requests wrk completed. Every process started here is stopped on exit.
set -euo pipefail

# Many short rounds rather than a few long ones: on a shared VM the machine's speed drifts over
# seconds, and the per-round ratio (both proxies back to back) is what cancels that drift.
SECONDS_PER_RUN=${E2E_SECONDS:-5}
ROUNDS=${E2E_ROUNDS:-9}
WARMUP=${E2E_WARMUP:-1}
CONNECTIONS=${E2E_CONNECTIONS:-32}

BACKEND_A=127.0.0.2:18081
BACKEND_B=127.0.0.3:18081
TIDEGATE=127.0.0.1:18080
TIDEGATE_ADMIN=127.0.0.1:18090
NGINX_PROXY=127.0.0.1:18082

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# shellcheck source=benches/lib.sh
source "$repo/benches/lib.sh" e2e

need_tools() {
    install_missing wrk:wrk nginx:nginx taskset:util-linux curl:curl
}

# Polls URL until it answers 200, for at most 10 s.
wait_ready() {
    local url=$1 code=
    for _ in $(seq 100); do
        code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)
        [ "$code" = 200 ] && return 0
        sleep 0.1
    done
    log "error: $url did not answer 200 within 10 s (last status: ${code:-none})"
    exit 1
}

to_us() { # wrk latency (e.g. 512.00us, 1.20ms, 2.00s) -> microseconds
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) m = 1; else if (v ~ /ms$/) m = 1000; else if (v ~ /s$/) m = 1000000; else m = 1
        printf "%.0f", n * m
    }'
}

results=$work/results.tsv
: >"$results"

# run TARGET URL [PROXY_PID]: one wrk run; appends target, rps, p50 µs, p99 µs, cpu µs/req, errors.
run() {
    local target=$1 url=$2 pid=${3:-} out=$work/wrk-$1-$round.txt before=0 after=0 pids_
    if [ -n "$pid" ]; then
        # An uncounted second first: a proxy measured straight after an idle spell (the direct
        # run) paid for waking up, and whichever went first in a round came out ~8% worse.
        taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${WARMUP}s" "$url" >/dev/null
        pids_=$(proxy_pids "$pid")
        # shellcheck disable=SC2086
        before=$(cpu_ticks $pids_)
    fi
    taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency "$url" >"$out"
    if [ -n "$pid" ]; then
        # shellcheck disable=SC2086
        after=$(cpu_ticks $pids_)
    fi
    local requests rps p50 p99 errors cpu
    requests=$(awk '/requests in/ {print $1}' "$out")
    rps=$(awk '/^Requests\/sec/ {print $2}' "$out")
    p50=$(to_us "$(awk '$1 == "50%" {print $2}' "$out")")
    p99=$(to_us "$(awk '$1 == "99%" {print $2}' "$out")")
    errors=$(awk '/Non-2xx|Socket errors/ {sub(/^ +/, ""); printf "%s; ", $0}' "$out")
    if [ -n "$pid" ]; then
        cpu=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$requests" \
            'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
    else
        cpu=-
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$rps" "$p50" "$p99" "$cpu" "${errors:-none}" >>"$results"
    log "$(printf '%-9s %10s req/s  p50 %6s us  p99 %6s us  cpu %6s us/req  errors: %s' \
        "$target" "$rps" "$p50" "$p99" "$cpu" "${errors:-none}")"
}

need_tools
CLK_TCK=$(getconf CLK_TCK)

if [ -z "${E2E_NO_BUILD:-}" ]; then
    log "building tidegate (release)"
    (cd "$repo" && cargo build --release --quiet --bin tidegate)
fi
[ -x "$repo/target/release/tidegate" ] || { log "error: no target/release/tidegate"; exit 1; }

backend_http='
    server {
        listen LISTEN;
        default_type text/plain;
        location / { return 200 "hello"; }
    }'
start_nginx backend-a 1 "${backend_http/LISTEN/$BACKEND_A}"
start_nginx backend-b 1 "${backend_http/LISTEN/$BACKEND_B}"
start_nginx proxy 0 "
    upstream backends {
        server $BACKEND_A;
        server $BACKEND_B;
        keepalive 64;
        keepalive_requests 100000000;
    }
    server {
        listen $NGINX_PROXY;
        location / {
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"
nginx_pid=$started_pid

write_tidegate_config "$work/tidegate.yaml" "$TIDEGATE" "$TIDEGATE_ADMIN" "${E2E_TIDEGATE_YAML:-}"
RUST_LOG=warn taskset -c 0 "$repo/target/release/tidegate" proxy --config "$work/tidegate.yaml" \
    2>"$work/tidegate.log" &
tidegate_pid=$!
pids+=("$tidegate_pid")

wait_ready "http://$BACKEND_A/"
wait_ready "http://$BACKEND_B/"
wait_ready "http://$NGINX_PROXY/"
wait_ready "http://$TIDEGATE/"

log "machine: $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), load $(cut -d' ' -f1-3 /proc/loadavg)"
log "tidegate threads: $(ls /proc/$tidegate_pid/task | wc -l); nginx proxy workers: $(pgrep -cP "$nginx_pid")"
log "warm-up: 2 s against each proxy (fills both connection pools)"
taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d2s "http://$TIDEGATE/" >/dev/null
taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d2s "http://$NGINX_PROXY/" >/dev/null

for round in $(seq "$ROUNDS"); do
    log "round $round/$ROUNDS (wrk -t1 -c$CONNECTIONS -d${SECONDS_PER_RUN}s)"
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

if [ -n "${E2E_PERF:-}" ]; then
    # One extra run per proxy under `perf record` (CPU profile) and `perf stat` (syscalls and context
    # switches per request); perf's own overhead is why these runs are not in the table.
    mkdir -p "$E2E_PERF"
    events=raw_syscalls:sys_enter,context-switches
    for call in writev write sendto recvfrom read epoll_wait futex sched_yield connect accept4 close; do
        events+=,syscalls:sys_enter_$call
    done
    for target in tidegate nginx; do
        if [ $target = tidegate ]; then pid=$tidegate_pid url=http://$TIDEGATE/; else pid=$nginx_pid url=http://$NGINX_PROXY/; fi
        targets=$(proxy_pids "$pid" | paste -sd,)
        perf record -q -g -o "$E2E_PERF/$target.perf.data" -p "$targets" \
            -- sleep "$SECONDS_PER_RUN" 2>>"$E2E_PERF/perf.log" &
        record_pid=$!
        perf stat -x, -e "$events" -o "$E2E_PERF/$target.stat.csv" -p "$targets" \
            -- sleep "$SECONDS_PER_RUN" 2>>"$E2E_PERF/perf.log" &
        stat_pid=$!
        pids+=("$record_pid" "$stat_pid")
        taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" "$url" >"$E2E_PERF/$target.wrk.txt"
        wait "$record_pid" || log "perf record failed for $target; see $E2E_PERF/perf.log"
        wait "$stat_pid" || log "perf stat failed for $target; see $E2E_PERF/perf.log"
        requests=$(awk '/requests in/ {print $1}' "$E2E_PERF/$target.wrk.txt")
        log "$target per request under perf: $(awk -F, -v n="$requests" '
            $3 ~ /raw_syscalls|context-switches|sys_enter_/ && $1 + 0 > 0 {
                name = $3; sub(/^.*sys_enter_?/, "", name); if (name == "") name = "syscalls"
                printf "%s %.2f  ", name, $1 / n
            }' "$E2E_PERF/$target.stat.csv")"
    done
    log "profiles (not counted above): perf report -i $E2E_PERF/tidegate.perf.data --no-children"
fi

if ! kill -0 "$tidegate_pid" 2>/dev/null; then
    log "error: tidegate exited during the run; its log:"
    cat "$work/tidegate.log" >&2
    exit 1
fi
# tidegate's own account: every request should be a 200 from v1, with no upstream errors or retries.
log "tidegate counters after the runs:"
curl -s --max-time 2 "http://$TIDEGATE_ADMIN/metrics" |
    grep -E '^tidegate_(requests_total|upstream_errors_total|retries_total)' | sed 's/^/  /' >&2 || true
log "idle upstream connections: tidegate $(ss -Htnp state established "( dport = :${BACKEND_A##*:} )" |
    grep -c "pid=$tidegate_pid," || true), nginx $(ss -Htnp state established "( dport = :${BACKEND_A##*:} )" |
    grep -c "nginx" || true) (wrk used $CONNECTIONS client connections)"
if [ -s "$work/tidegate.log" ]; then
    log "tidegate log (warnings and errors):"
    head -20 "$work/tidegate.log" >&2
fi

# Median over rounds of every column; the ratio is tidegate's (or nginx's) CPU/request over nginx's.
echo
echo "median of $ROUNDS rounds, wrk -t1 -c$CONNECTIONS -d${SECONDS_PER_RUN}s, proxy on CPU 0, wrk + backends on CPU 1"
sort -t$'\t' -k1,1 "$results" | awk -F'\t' '
    function median(list,   a, n, i, j, t) {
        n = split(list, a, " ")
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    { rps[$1] = rps[$1] " " $2; p50[$1] = p50[$1] " " $3; p99[$1] = p99[$1] " " $4; cpu[$1] = cpu[$1] " " $5
      if ($6 != "none") err[$1] = err[$1] $6 }
    END {
        ref = median(cpu["nginx"])
        printf "| %-8s | %10s | %8s | %8s | %13s | %14s |\n", "target", "requests/s", "p50 (us)", "p99 (us)", "CPU us/request", "ratio to nginx"
        printf "|----------|-----------:|---------:|---------:|--------------:|---------------:|\n"
        n = split("direct tidegate nginx", order, " ")
        for (k = 1; k <= n; k++) {
            t = order[k]
            c = t == "direct" ? "-" : sprintf("%.2f", median(cpu[t]))
            r = t == "direct" ? "-" : sprintf("%.2f", median(cpu[t]) / ref)
            printf "| %-8s | %10.0f | %8.0f | %8.0f | %13s | %14s |\n", t, median(rps[t]), median(p50[t]), median(p99[t]), c, r
        }
        for (t in err) printf "errors reported by wrk for %s: %s\n", t, err[t]
    }'
# The two proxies of one round ran back to back, so their ratio cancels most of the machine's drift
# between rounds; its median is the number to quote on a noisy machine.
awk -F'\t' '
    $1 == "tidegate" { t[++nt] = $5 }
    $1 == "nginx" { g[++ng] = $5 }
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
    printf 'target\trequests/s\tp50_us\tp99_us\tcpu_us/req\twrk_errors\n'
    cat "$results"
} | column -t -s$'\t'
