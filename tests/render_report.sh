#!/usr/bin/env bash
# Renders a `tidegate loadtest --report` page in headless Chromium, to look at it as a person would.
# Not run by CI. Usage: tests/render_report.sh [REPORT.html [SCREENSHOT.png]]
#   - REPORT.html exists: render it as it is (e.g. one the demo wrote).
#   - otherwise: generate it first, by loading a tiny local server (127.0.0.1 only) that moves
#     from v1 to v2 over the run and answers some 503s on the way.
# Installs Debian's chromium when it is missing (needs root and the Debian mirror).
set -euo pipefail
cd "$(dirname "$0")/.."

report=$(realpath -m "${1:-target/loadtest-report.html}")
png=$(realpath -m "${2:-${report%.html}.png}")

if ! command -v chromium >/dev/null; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

if [[ ! -f "$report" ]]; then
    cargo build --quiet
    port_file=$(mktemp)
    # v2's share grows from 0 to 100% between 3 s and 9 s; 503s from v2 between 5 s and 6 s.
    python3 - "$port_file" <<'PY' &
import http.server, sys, threading, time
start = time.monotonic()
lock = threading.Lock()
count = [0]
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_GET(self):
        t = time.monotonic() - start
        with lock:
            count[0] += 1
            n = count[0]
        share = min(max((t - 3) / 6, 0), 1)
        version = "v2" if (n % 100) < share * 100 else "v1"
        status = 503 if version == "v2" and 5 <= t < 6 and n % 4 == 0 else 200
        body = f"This is {version}\n".encode()
        self.send_response(status)
        self.send_header("x-tidegate-version", version)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
open(sys.argv[1], "w").write(str(server.server_address[1]))
threading.Timer(30, server.shutdown).start()  # bounded: gone after 30 s whatever happens
server.serve_forever()
PY
    server=$!
    trap 'kill $server 2>/dev/null || true' EXIT
    for _ in $(seq 50); do [[ -s "$port_file" ]] && break; sleep 0.1; done
    port=$(cat "$port_file")
    ./target/debug/tidegate loadtest "http://127.0.0.1:$port/" --rate 200 --duration 12s \
        --connections 16 --quiet --max-failures 1000000 --report "$report" \
        --mark "3s:set image v2" --mark "5s:weight 50%" --mark "9s:rollout complete"
fi

chromium --headless --no-sandbox --disable-gpu --hide-scrollbars \
    --screenshot="$png" --window-size=1400,2400 "file://$report" 2>/dev/null
echo "report: $report"
echo "screenshot: $png"
