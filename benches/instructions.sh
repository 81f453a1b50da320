#!/usr/bin/env bash
# User-space instructions per proxied request, tidegate vs nginx, under valgrind's callgrind.
#
# Instruction counts repeat run to run (unlike CPU time on a shared VM), so this is the number to
# optimise against; e2e.sh gives the wall-clock CPU comparison, kernel included. Loopback only
# (127.0.0.2-3:18281, 127.0.0.1:18280/18283/18289); every process is stopped on exit; about 1 minute.
# The proxy runs on one core (as in e2e.sh), so tidegate takes its single-threaded runtime.
# Knobs: INSTR_SECONDS (10) of wrk load per proxy; INSTR_NO_BUILD=1; INSTR_TIDEGATE_YAML: extra
# top-level keys for tidegate's config (e.g. 'access_log: { path: /dev/null }'); INSTR_KEEP=DIR keeps
# the callgrind profiles there, for callgrind_annotate; INSTR_PROFILE=release-lines profiles a build
# with line tables (Cargo.toml), so `callgrind_annotate --auto=yes` can show source lines.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
seconds=${INSTR_SECONDS:-10}
export PATH=$PATH:/usr/sbin
work=$(mktemp -d /tmp/tidegate-instr.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

missing=()
for tool in valgrind:valgrind nginx:nginx wrk:wrk curl:curl; do
    command -v "${tool%%:*}" >/dev/null || missing+=("${tool#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
profile=${INSTR_PROFILE:-release}
[ -n "${INSTR_NO_BUILD:-}" ] || (cd "$repo" && cargo build --profile "$profile" --quiet --bin tidegate)

nginx_conf() { # NAME BODY
    mkdir -p "$work/$1/logs"
    cat >"$work/$1/nginx.conf" <<CONF
daemon off; master_process off; worker_processes 1;
pid $work/$1/nginx.pid; error_log $work/$1/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off; keepalive_requests 100000000; keepalive_timeout 60s;
    client_body_temp_path $work/$1/cb; proxy_temp_path $work/$1/p; fastcgi_temp_path $work/$1/f;
    uwsgi_temp_path $work/$1/u; scgi_temp_path $work/$1/s;
    $2
}
CONF
}
wait_ok() { for _ in $(seq 150); do curl -s -o /dev/null --max-time 1 "$1" && return 0; sleep 0.2; done; echo "no answer from $1" >&2; exit 1; }

for b in 127.0.0.2 127.0.0.3; do
    nginx_conf "backend-$b" "server { listen $b:18281; location / { return 200 \"hello\"; } }"
    nginx -p "$work/backend-$b" -c "$work/backend-$b/nginx.conf" </dev/null >/dev/null 2>&1 &
    pids+=($!)
done
cat >"$work/tidegate.yaml" <<CONF
listen: 127.0.0.1:18280
admin: { listen: 127.0.0.1:18289 }
discovery: { static: { endpoints: [ { address: "127.0.0.2:18281", version: v1 }, { address: "127.0.0.3:18281", version: v1 } ] } }
${INSTR_TIDEGATE_YAML:-}
CONF
nginx_conf proxy 'upstream b { server 127.0.0.2:18281; server 127.0.0.3:18281; keepalive 64; keepalive_requests 100000000; }
    server { listen 127.0.0.1:18283; location / { proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; } }'

measure() { # NAME URL STOP_SIGNAL COMMAND...
    local name=$1 url=$2 signal=$3; shift 3
    taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$work/$name.cg" "$@" >/dev/null 2>"$work/$name.log" &
    local vg=$!
    pids+=("$vg")
    wait_ok "$url"
    wrk -t1 -c8 -d"${seconds}s" "$url" >"$work/$name.wrk"
    kill "-$signal" "$vg"; wait "$vg" || true
    local requests ir
    requests=$(awk '/requests in/ {print $1}' "$work/$name.wrk")
    ir=$(awk '/^summary:/ {print $2}' "$work/$name.cg")
    [ -z "${INSTR_KEEP:-}" ] || { mkdir -p "$INSTR_KEEP" && cp "$work/$name.cg" "$INSTR_KEEP/"; }
    printf '%-9s %8d requests  %7d instructions/request (user space, startup included)\n' \
        "$name" "$requests" $((ir / requests))
}
RUST_LOG=warn measure tidegate http://127.0.0.1:18280/ INT "$repo/target/$profile/tidegate" proxy --config "$work/tidegate.yaml"
measure nginx http://127.0.0.1:18283/ QUIT nginx -p "$work/proxy" -c "$work/proxy/nginx.conf"
