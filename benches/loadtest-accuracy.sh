#!/usr/bin/env bash
# How accurate `tidegate loadtest`'s latency is: the same local nginx, the same rates and
# connections, measured by tidegate loadtest, wrk and hey side by side.
#
#   bash benches/loadtest-accuracy.sh                 # 100 and 1,000 req/s, 10 s each: ~1 minute
#   ACC_RATES="100 1000 5000" ACC_SECONDS=5 bash benches/loadtest-accuracy.sh
#   ACC_NO_BUILD=1 bash benches/loadtest-accuracy.sh  # use the target/release/tidegate already built
#
# One nginx (`return 200 "hello"`, one worker) on 127.0.0.2:18095, pinned to CPU 0; each load
# generator runs alone on CPU 1, one after the other, with 10 connections:
# - tidegate loadtest: open loop at the rate; latency from each request's intended start (the
#   headline), and service time from the actual send.
# - wrk: closed loop slowed to the rate by a Lua `delay()` of connections/rate per request on each
#   connection; latency from its send (wrk's own percentiles, 10 µs resolution).
# - hey: `-q rate/connections` per worker; latency from its send, from its CSV (`-o csv`: one row
#   per request, 0.1 ms resolution, so its p50 is rounded to 0.1 ms).
# The table prints p50/p90/p99 in ms per tool and rate, and whether tidegate's p50 is within
# 0.1 ms or 20% (the larger) of wrk's. Every process started here is stopped on exit.
set -euo pipefail

RATES=${ACC_RATES:-"100 1000"}
SECONDS_PER_RUN=${ACC_SECONDS:-10}
CONNECTIONS=${ACC_CONNECTIONS:-10}
BACKEND=127.0.0.2:18095

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# shellcheck source=benches/lib.sh
source "$repo/benches/lib.sh" loadtest-accuracy

install_missing wrk:wrk hey:hey nginx:nginx taskset:util-linux curl:curl python3:python3
if [ -z "${ACC_NO_BUILD:-}" ]; then
    log "building tidegate (release)"
    (cd "$repo" && cargo build --release --quiet)
fi
tidegate=$repo/target/release/tidegate

start_nginx backend 0 "server { listen $BACKEND; location / { return 200 \"hello\"; } }"
for _ in $(seq 100); do
    [ "$(curl -s --max-time 1 "http://$BACKEND/" || true)" = hello ] && break
    sleep 0.1
done
[ "$(curl -s --max-time 1 "http://$BACKEND/" || true)" = hello ] || {
    log "error: nginx on $BACKEND did not answer"
    exit 1
}

# percentiles FILE: p50 p90 p99 (ms) of the seconds, one per line, in FILE.
percentiles() {
    python3 - "$1" <<'PY'
import sys
values = sorted(float(line) for line in open(sys.argv[1]) if line.strip())
def at(q):
    return values[min(len(values) - 1, int(q * len(values)))] * 1000
print(f"{at(0.5):.3f} {at(0.9):.3f} {at(0.99):.3f} {len(values)}")
PY
}

# wrk_ms VALUE: wrk's latency (152.00us, 1.20ms, 2.00s) in ms.
wrk_ms() {
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) m = 0.001; else if (v ~ /ms$/) m = 1; else if (v ~ /s$/) m = 1000; else m = 1
        printf "%.3f", n * m
    }'
}

rows=()
verdicts=()
for rate in $RATES; do
    log "rate $rate req/s: tidegate loadtest"
    taskset -c 1 "$tidegate" loadtest "http://$BACKEND/" --rate "$rate" \
        --duration "${SECONDS_PER_RUN}s" --connections "$CONNECTIONS" --quiet \
        --json "$work/tidegate.json" >/dev/null
    read -r t50 t90 t99 tn s50 s99 lag <<<"$(python3 - "$work/tidegate.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
l, s, g = d["latency"], d["service"], d["start_lag"]
print(f'{l["p50_ms"]:.3f} {l["p90_ms"]:.3f} {l["p99_ms"]:.3f} {d["requests"]} '
      f'{s["p50_ms"]:.3f} {s["p99_ms"]:.3f} {g["p50_ms"]:.3f}')
PY
)"
    rows+=("| $rate | tidegate loadtest (from intended start) | $t50 | $t90 | $t99 | $tn |")
    rows+=("| $rate | tidegate loadtest (service time) | $s50 | – | $s99 | $tn |")

    log "rate $rate req/s: wrk"
    delay_ms=$(awk -v c="$CONNECTIONS" -v r="$rate" 'BEGIN { printf "%d", c * 1000 / r }')
    printf 'function delay() return %s end\n' "$delay_ms" >"$work/pace.lua"
    wrk_out=$(taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency \
        -s "$work/pace.lua" "http://$BACKEND/")
    w50=$(wrk_ms "$(awk '$1 == "50%" { print $2 }' <<<"$wrk_out")")
    w90=$(wrk_ms "$(awk '$1 == "90%" { print $2 }' <<<"$wrk_out")")
    w99=$(wrk_ms "$(awk '$1 == "99%" { print $2 }' <<<"$wrk_out")")
    wn=$(awk '/requests in/ { print $1 }' <<<"$wrk_out")
    rows+=("| $rate | wrk (Lua delay ${delay_ms} ms per connection) | $w50 | $w90 | $w99 | $wn |")

    log "rate $rate req/s: hey"
    per_worker=$(awk -v c="$CONNECTIONS" -v r="$rate" 'BEGIN { printf "%g", r / c }')
    taskset -c 1 hey -z "${SECONDS_PER_RUN}s" -c "$CONNECTIONS" -q "$per_worker" -o csv \
        "http://$BACKEND/" | awk -F, 'NR > 1 && $7 == 200 { print $1 }' >"$work/hey.txt"
    read -r h50 h90 h99 hn <<<"$(percentiles "$work/hey.txt")"
    rows+=("| $rate | hey (-q $per_worker per worker) | $h50 | $h90 | $h99 | $hn |")

    verdicts+=("$(awk -v t="$t50" -v w="$w50" -v r="$rate" -v lag="$lag" 'BEGIN {
        d = t - w; if (d < 0) d = -d
        allowed = (0.2 * w > 0.1) ? 0.2 * w : 0.1
        printf "%s req/s: tidegate p50 %.3f ms vs wrk %.3f ms: off by %.3f ms, allowed %.3f ms: %s (requests started %.3f ms after their time at p50)",
            r, t, w, d, allowed, (d <= allowed) ? "within" : "OUTSIDE", lag
    }')")
done

printf '\n| req/s | tool | p50 ms | p90 ms | p99 ms | requests |\n|---:|---|---:|---:|---:|---:|\n'
printf '%s\n' "${rows[@]}"
printf '\n'
printf '%s\n' "${verdicts[@]}"
printf '\n%s, %s cores, %s; nginx on CPU 0, each load generator alone on CPU 1, %s connections, %s s per run\n' \
    "$(date -u +%Y-%m-%d)" "$(nproc)" "$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)" \
    "$CONNECTIONS" "$SECONDS_PER_RUN"
