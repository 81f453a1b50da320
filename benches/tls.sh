#!/usr/bin/env bash
# CPU cost of TLS termination: tidegate against an nginx reverse proxy with the same certificate, on
# loopback. Three measurements, interleaved per round:
#
#   h1         CPU µs per request, HTTPS with HTTP/1.1 keep-alive (wrk -t1 -c32)
#   h2         CPU µs per request, HTTPS with HTTP/2 negotiated by ALPN (h2load -c10 -m10)
#   handshake  full TLS handshakes: handshakes/s and CPU µs per handshake (openssl s_time -new)
#
#   bash benches/tls.sh            # 5 rounds x 3 tests x (tidegate, nginx) x 5 s: about 3.5 minutes
#   TLS_SECONDS=3 TLS_ROUNDS=3 bash benches/tls.sh
#   TLS_NO_BUILD=1 bash benches/tls.sh        # use the target/release/tidegate already built
#
# A self-signed EC P-256 certificate is generated into the scratch directory at start (and removed
# with it); both proxies serve it. Two plain-HTTP nginx backends answer `200 hello` on
# 127.0.0.2:18181 and 127.0.0.3:18181; both proxies forward over HTTP/1.1 with keep-alive. The proxy
# under test runs alone on CPU 0; the load generator and the backends share CPU 1. For each proxy
# run the proxy's utime+stime (all threads; nginx master + worker) is read from /proc before and
# after, and divided by the requests (or handshakes) completed. Every process started here is
# stopped on exit. Same method as e2e.sh and h2.sh.
set -euo pipefail

SECONDS_PER_RUN=${TLS_SECONDS:-5}
ROUNDS=${TLS_ROUNDS:-5}
WARMUP=${TLS_WARMUP:-1}
CONNECTIONS=${TLS_CONNECTIONS:-32}  # wrk -c (h1)
CLIENTS=${TLS_CLIENTS:-10}          # h2load -c (h2)
STREAMS=${TLS_STREAMS:-10}          # h2load -m (h2)
HS_CLIENTS=${TLS_HS_CLIENTS:-1}     # concurrent `openssl s_time -new` processes (handshake)
# Up to 100 requests in flight on HTTP/2, each holding an HTTP/1.1 upstream connection; with
# `keepalive 64` nginx would close and reopen upstream connections during the h2 runs (h2.sh).
NGINX_KEEPALIVE=${TLS_NGINX_KEEPALIVE:-128}

BACKEND_A=127.0.0.2:18181
BACKEND_B=127.0.0.3:18181
TIDEGATE=127.0.0.1:18180
TIDEGATE_ADMIN=127.0.0.1:18193
NGINX_PROXY=127.0.0.1:18182

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# shellcheck source=benches/lib.sh
source "$repo/benches/lib.sh" tls

need_tools() {
    install_missing wrk:wrk h2load:nghttp2-client openssl:openssl nginx:nginx taskset:util-linux \
        curl:curl timeout:coreutils
}

# wait_ready URL CURL_OPTION WANT: polls URL until curl prints WANT ("BODY STATUS HTTP/VERSION"),
# for at most 10 s.
wait_ready() {
    local url=$1 opt=$2 want=$3 got=
    for _ in $(seq 100); do
        got=$(curl -sk "$opt" --max-time 1 -w ' %{http_code} HTTP/%{http_version}' "$url" || true)
        [ "$got" = "$want" ] && return 0
        sleep 0.1
    done
    log "error: $url did not answer \`$want\` within 10 s (last: ${got:-nothing})"
    exit 1
}

to_us() { # wrk/h2load duration (e.g. 512.00us, 1.20ms, 2.00s) -> microseconds
    awk -v v="$1" 'BEGIN {
        n = v + 0
        if (v ~ /us$/) m = 1; else if (v ~ /ms$/) m = 1000; else if (v ~ /s$/) m = 1000000; else m = 1
        printf "%.0f", n * m
    }'
}

# Every load command is bounded: it gets its duration plus 30 s, then TERM, then KILL.
bounded() { timeout -k 5 $((SECONDS_PER_RUN + WARMUP + 30)) "$@"; }

# The loads, on CPU 1: load_h1|load_h2|load_hs SECONDS TARGET. The handshake load writes one
# `s_time` output per client, $work/hs.N.
load_h1() { bounded taskset -c 1 wrk -t1 -c"$CONNECTIONS" -d"$1s" --latency "https://$2/"; }
load_h2() { bounded taskset -c 1 h2load -c"$CLIENTS" -m"$STREAMS" -D"$1" "https://$2/"; }
load_hs() {
    local i hs_pids=() status=0
    for i in $(seq "$HS_CLIENTS"); do
        # -new: every connection starts from a fresh SSL object with no session to offer, so every
        # handshake is a full one (no resumption, no PSK), whatever tickets the server sends.
        bounded taskset -c 1 openssl s_time -connect "$2" -new -time "$1" >"$work/hs.$i" 2>&1 &
        hs_pids+=($!)
    done
    for i in "${hs_pids[@]}"; do
        wait "$i" || status=1
    done
    return $status
}

results=$work/results.tsv
: >"$results"

# run TEST TARGET HOSTPORT PROXY_PID: an uncounted warm-up, then one counted run; appends test,
# target, rate (requests/s or handshakes/s), latency µs (p50 for h1, mean for h2, - for handshakes),
# CPU µs per request or handshake, completed count, errors.
run() {
    local test=$1 target=$2 addr=$3 pid=$4 out=$work/$1-$2-$round.txt before after pids_ t0 t1
    # An uncounted run first (e2e.sh found that a proxy measured straight after an idle spell paid
    # for waking up), in a separate process so that the CPU read around the counted run covers
    # exactly what the counted run reports.
    "load_$test" "$WARMUP" "$addr" >/dev/null 2>&1 || true
    pids_=$(proxy_pids "$pid")
    # shellcheck disable=SC2086
    before=$(cpu_ticks $pids_)
    t0=$(date +%s%N)
    if ! "load_$test" "$SECONDS_PER_RUN" "$addr" >"$out" 2>&1; then
        log "error: the $test load failed against $target:"
        tail -20 "$out" "$work"/hs.* >&2 2>/dev/null || true
        exit 1
    fi
    t1=$(date +%s%N)
    # shellcheck disable=SC2086
    after=$(cpu_ticks $pids_)
    local count rate latency errors
    case $test in
    h1)
        # 150000 requests in 5.00s, 12.00MB read / Requests/sec: 30000.00 / 50% 1.00ms
        count=$(awk '/requests in/ {print $1}' "$out")
        rate=$(awk '/^Requests\/sec/ {print $2}' "$out")
        latency=$(to_us "$(awk '$1 == "50%" {print $2}' "$out")")
        errors=$(awk '/Non-2xx|Socket errors/ {sub(/^ +/, ""); printf "%s; ", $0}' "$out")
        ;;
    h2)
        if ! grep -q '^Application protocol: h2$' "$out"; then
            log "error: h2load did not negotiate h2 with $target:"
            tail -20 "$out" >&2
            exit 1
        fi
        count=$(awk '/^requests:/ {print $8}' "$out")
        rate=$(awk '/^finished in/ {print $4}' "$out")
        latency=$(to_us "$(awk '/^time for request:/ {print $6}' "$out")")
        errors=$(awk '
            /^requests:/ { for (i = 10; i <= NF; i += 2) if ($i + 0 > 0) printf "%s %s; ", $i, $(i + 1) }
            /^status codes:/ { for (i = 5; i <= NF; i += 2) if ($i + 0 > 0) printf "%s %s; ", $i, $(i + 1) }
        ' "$out" | sed 's/,//g')
        ;;
    hs)
        # s_time prints "1234 connections in 5.00s; 246.80 connections/user sec, bytes read 0" and
        # "1234 connections in 6 real seconds, 0 bytes read per connection"; the rate here is over
        # the wall time measured around the clients.
        cat "$work"/hs.* >"$out"
        count=$(awk '/connections in .* real seconds/ {n += $1} END {print n + 0}' "$out")
        rate=$(awk -v n="$count" -v ns=$((t1 - t0)) 'BEGIN { printf "%.1f", n / (ns / 1e9) }')
        latency=-
        errors=$(grep -ci 'error' "$out" | awk '$1 > 0 {printf "%d error lines; ", $1}' || true)
        ;;
    esac
    if [ "${count:-0}" -eq 0 ]; then
        log "error: nothing completed in the $test run against $target:"
        tail -20 "$out" >&2
        exit 1
    fi
    local cpu
    cpu=$(awk -v t=$((after - before)) -v hz="$CLK_TCK" -v n="$count" \
        'BEGIN { printf "%.2f", t / hz * 1e6 / n }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$test" "$target" "$rate" "$latency" "$cpu" "$count" \
        "${errors:-none}" >>"$results"
    log "$(printf '%-9s %-8s %10s /s  latency %6s us  cpu %8s us each  errors: %s' \
        "$test" "$target" "$rate" "$latency" "$cpu" "${errors:-none}")"
}

need_tools
CLK_TCK=$(getconf CLK_TCK)

if [ -z "${TLS_NO_BUILD:-}" ]; then
    log "building tidegate (release)"
    (cd "$repo" && cargo build --release --quiet --bin tidegate)
fi
[ -x "$repo/target/release/tidegate" ] || { log "error: no target/release/tidegate"; exit 1; }

# One self-signed EC P-256 certificate for both proxies, made here and removed with $work.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext 'subjectAltName=DNS:localhost,IP:127.0.0.1' \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>"$work/openssl-req.log" ||
    { log "error: openssl req failed:"; cat "$work/openssl-req.log" >&2; exit 1; }

backend_http='
    server {
        listen LISTEN;
        default_type text/plain;
        location / { return 200 "hello"; }
    }'
start_nginx backend-a 1 "${backend_http/LISTEN/$BACKEND_A}"
start_nginx backend-b 1 "${backend_http/LISTEN/$BACKEND_B}"
# nginx 1.22 spells HTTP/2 over TLS `listen ... ssl http2` (`http2 on;` came in 1.25.1), and its
# default `ssl_protocols` stops at TLSv1.2 (TLSv1.3 joined the default in 1.23.4): without the line
# below it would do TLS 1.2 handshakes while tidegate (rustls) does TLS 1.3. Session settings are
# nginx's defaults (no shared session cache; session tickets on), as tidegate's are rustls's; the
# handshake test offers no session, so neither resumes.
start_nginx proxy 0 "
    upstream backends {
        server $BACKEND_A;
        server $BACKEND_B;
        keepalive $NGINX_KEEPALIVE;
        keepalive_requests 100000000;
    }
    server {
        listen $NGINX_PROXY ssl http2;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_certificate $work/cert.pem;
        ssl_certificate_key $work/key.pem;
        location / {
            proxy_pass http://backends;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"
nginx_pid=$started_pid

# Paths relative to the config file's directory.
write_tidegate_config "$work/tidegate.yaml" "$TIDEGATE" "$TIDEGATE_ADMIN" \
    "tls: { cert_file: cert.pem, key_file: key.pem }"
RUST_LOG=warn taskset -c 0 "$repo/target/release/tidegate" proxy --config "$work/tidegate.yaml" \
    2>"$work/tidegate.log" &
tidegate_pid=$!
pids+=("$tidegate_pid")

wait_ready "http://$BACKEND_A/" --http1.1 "hello 200 HTTP/1.1"
wait_ready "http://$BACKEND_B/" --http1.1 "hello 200 HTTP/1.1"
for proxy in "$NGINX_PROXY" "$TIDEGATE"; do
    wait_ready "https://$proxy/" --http1.1 "hello 200 HTTP/1.1"
    wait_ready "https://$proxy/" --http2 "hello 200 HTTP/2"
done

log "machine: $(nproc) CPUs ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), load $(cut -d' ' -f1-3 /proc/loadavg)"
tasks=("/proc/$tidegate_pid/task"/*)
log "tidegate threads: ${#tasks[@]}; nginx proxy workers: $(pgrep -cP "$nginx_pid")"
# What a handshake negotiates with each (the same client library as the handshake test); the
# comparison only means something if both agree.
negotiated=()
for proxy in "$TIDEGATE" "$NGINX_PROXY"; do
    negotiated+=("$(timeout 10 openssl s_client -connect "$proxy" -servername localhost \
        </dev/null 2>/dev/null | awk '
            /^Server Temp Key:/ { sub(/^Server Temp Key: /, ""); key = $0 }
            /^Peer signature type:/ { sig = $4 }
            /^New, / { proto = $2; sub(/,$/, "", proto); cipher = $5 }
            END { printf "%s %s, key exchange %s, signature %s", proto, cipher, key, sig }')")
    log "handshake with $proxy: ${negotiated[-1]}"
done
if [ "${negotiated[0]}" != "${negotiated[1]}" ]; then
    log "error: tidegate and nginx negotiate different TLS parameters; the comparison would be unfair"
    exit 1
fi
log "warm-up: 2 s against each proxy (fills both upstream pools)"
load_h2 2 "$TIDEGATE" >/dev/null 2>&1 || true
load_h2 2 "$NGINX_PROXY" >/dev/null 2>&1 || true

for round in $(seq "$ROUNDS"); do
    log "round $round/$ROUNDS (${SECONDS_PER_RUN}s per run)"
    for test in h1 h2 hs; do
        # Alternate which proxy goes first, so that drift in the machine's speed within a round
        # favours neither.
        if [ $((round % 2)) -eq 1 ]; then
            run "$test" tidegate "$TIDEGATE" "$tidegate_pid"
            run "$test" nginx "$NGINX_PROXY" "$nginx_pid"
        else
            run "$test" nginx "$NGINX_PROXY" "$nginx_pid"
            run "$test" tidegate "$TIDEGATE" "$tidegate_pid"
        fi
    done
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
if [ -s "$work/tidegate.log" ]; then
    log "tidegate log (warnings and errors; a client closing after its handshake may show here):"
    head -20 "$work/tidegate.log" >&2
fi
for name in proxy backend-a backend-b; do
    if [ -s "$work/$name/logs/error.log" ]; then
        log "nginx $name error log:"
        head -10 "$work/$name/logs/error.log" >&2
    fi
done

# Median over rounds of every column, per test; the ratio is tidegate's CPU per request (or per
# handshake) over nginx's. "per core" is 1e6 / CPU µs: what one fully busy core would do.
echo
echo "median of $ROUNDS rounds, ${SECONDS_PER_RUN}s per run, proxy on CPU 0, load + backends on CPU 1"
echo "h1: wrk -t1 -c$CONNECTIONS (HTTP/1.1 keep-alive over TLS); h2: h2load -c$CLIENTS -m$STREAMS (h2 via ALPN);"
echo "handshake: $HS_CLIENTS x openssl s_time -new (sequential full TLS handshakes, no request, no resumption)"
sort -t$'\t' -k1,2 "$results" | awk -F'\t' '
    function median(list,   a, n, i, j, t) {
        n = split(list, a, " ")
        for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    { k = $1 SUBSEP $2; rate[k] = rate[k] " " $3; lat[k] = lat[k] " " $4; cpu[k] = cpu[k] " " $5
      if ($7 != "none") err[$1 " " $2] = err[$1 " " $2] $7 }
    END {
        printf "| %-9s | %-8s | %12s | %12s | %15s | %13s | %14s |\n", "test", "target", "rate (/s)", "latency (us)", "CPU us per unit", "per core (/s)", "ratio to nginx"
        printf "|-----------|----------|-------------:|-------------:|----------------:|--------------:|---------------:|\n"
        nt = split("h1 h2 hs", tests, " "); np = split("tidegate nginx", proxies, " ")
        for (i = 1; i <= nt; i++) {
            ref = median(cpu[tests[i], "nginx"])
            for (j = 1; j <= np; j++) {
                k = tests[i] SUBSEP proxies[j]
                if (!(k in cpu)) continue
                c = median(cpu[k])
                l = tests[i] == "hs" ? "-" : sprintf("%.0f", median(lat[k]))
                printf "| %-9s | %-8s | %12.0f | %12s | %15.2f | %13.0f | %14.2f |\n", tests[i] == "hs" ? "handshake" : tests[i], proxies[j], median(rate[k]), l, c, 1e6 / c, c / ref
            }
        }
        for (t in err) printf "errors reported for %s: %s\n", t, err[t]
    }'
# The two proxies of one round ran back to back, so their ratio cancels most of the machine's drift
# between rounds; its median is the number to quote on a noisy machine.
for test in h1 h2 hs; do
    awk -F'\t' -v test="$test" '
        $1 == test && $2 == "tidegate" { t[++nt] = $5 }
        $1 == test && $2 == "nginx" { g[++ng] = $5 }
        END {
            n = nt < ng ? nt : ng
            for (i = 1; i <= n; i++) { r[i] = t[i] / g[i]; if (r[i] <= 1) wins++ }
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (r[j] < r[i]) { x = r[i]; r[i] = r[j]; r[j] = x }
            median = n % 2 ? r[(n + 1) / 2] : (r[n / 2] + r[n / 2 + 1]) / 2
            printf "per-round ratio tidegate/nginx, %-9s (CPU us each): median %.3f, range %.3f-%.3f, tidegate at or below nginx in %d of %d rounds\n", test == "hs" ? "handshake" : test, median, r[1], r[n], wins + 0, n
        }' "$results"
done
echo
echo "every run:"
{
    printf 'test\ttarget\trate/s\tlatency_us\tcpu_us_each\tcompleted\terrors\n'
    cat "$results"
} | column -t -s$'\t'
