# shellcheck shell=bash
# Shared by the end-to-end benches (e2e.sh, h2.sh, tls.sh); sourced, not run, with the bench's
# name: `source benches/lib.sh NAME`. Sets `work` (a scratch directory) and `pids` (the processes
# to stop), and installs the cleanup trap that stops them and removes `work`.

work=$(mktemp -d "/tmp/tidegate-$1.XXXXXX")
# nginx workers drop to `nobody`; they must be able to reach their prefix.
chmod 755 "$work"
pids=()

# Stops every process in `pids` (TERM, then KILL after 5 s) and removes `work`.
cleanup() {
    local pid
    for pid in "${pids[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        # Bounded: a process that ignores TERM for 5 s gets KILL.
        for _ in $(seq 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log() { printf '%s\n' "$*" >&2; }

# install_missing COMMAND:PACKAGE...: installs the Debian packages whose command is missing.
install_missing() {
    local missing=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null || [ -x "/usr/sbin/${pair%%:*}" ] || missing+=("${pair#*:}")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    export PATH=$PATH:/usr/sbin
}

# Starts nginx instance NAME on CPU list CPUS with the given `http { ... }` body; sets started_pid
# to its master and remembers it for cleanup.
start_nginx() {
    local name=$1 cpus=$2 http=$3
    local prefix=$work/$name
    mkdir -p "$prefix/logs"
    chmod 755 "$prefix"
    cat >"$prefix/nginx.conf" <<CONF
daemon off;
worker_processes 1;
pid $prefix/nginx.pid;
error_log $prefix/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $prefix/client_body;
    proxy_temp_path $prefix/proxy;
    fastcgi_temp_path $prefix/fastcgi;
    uwsgi_temp_path $prefix/uwsgi;
    scgi_temp_path $prefix/scgi;
    # The default (1000) would make the load generator and the proxies reconnect during a run;
    # since nginx 1.19.7 it also bounds the streams of an HTTP/2 connection (GOAWAY every 1000).
    keepalive_requests 100000000;
    keepalive_timeout 60s;
$http
}
CONF
    taskset -c "$cpus" nginx -p "$prefix" -c "$prefix/nginx.conf" \
        </dev/null >>"$prefix/logs/stderr" 2>&1 &
    started_pid=$!
    pids+=("$started_pid")
}

# write_tidegate_config FILE LISTEN ADMIN [EXTRA_YAML]: a tidegate config serving LISTEN from the two
# static backends BACKEND_A and BACKEND_B (set by the bench), with EXTRA_YAML's top-level keys added.
write_tidegate_config() {
    cat >"$1" <<EOF
listen: $2
admin: { listen: $3 }
discovery:
  static:
    endpoints:
      - { address: "$BACKEND_A", version: v1 }
      - { address: "$BACKEND_B", version: v1 }
${4:-}
EOF
}

# Sum of utime+stime in clock ticks over the given PIDs (each /proc/PID/stat covers all threads).
cpu_ticks() {
    local total=0 pid stat rest
    for pid in "$@"; do
        stat=$(<"/proc/$pid/stat")
        rest=${stat##*) }          # fields from 3 (state) on; comm may hold spaces
        # shellcheck disable=SC2086
        set -- $rest
        total=$((total + ${12} + ${13})) # fields 14 (utime) and 15 (stime)
    done
    echo "$total"
}

# The proxy PIDs whose CPU is counted: the process itself and its children (nginx workers).
proxy_pids() {
    local pid=$1
    echo "$pid"
    pgrep -P "$pid" || true
}
