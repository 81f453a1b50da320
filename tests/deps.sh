#!/usr/bin/env bash
# Installs the system packages the test suite needs, only when missing: Debian's `prometheus` (it
# ships `promtool`) for tests/proxy/prometheus.rs, which runs the shipped dashboard and rules
# against a real Prometheus and fails when it is absent. Needs root (apt-get) only to install.
set -euo pipefail
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus
fi
