#!/usr/bin/env bash
# Installs the system packages the test suite needs, only when missing: Debian's `prometheus` (it
# ships `promtool`) for tests/proxy/prometheus.rs, which runs the shipped dashboard and rules
# against a real Prometheus and fails when it is absent; Debian's `python3-grpcio` for the real
# gRPC server and client of tests/grpc/fixture.py, run with Debian's own `/usr/bin/python3` (a
# pyenv or venv python3 on PATH would not see the package); Debian's `openssl` and `curl` for
# tests/proxy/tls.rs, which makes its certificates with the `openssl` CLI at run time and drives the
# proxy with `curl` and `openssl s_client`; Debian's `podman` and `runc` for tests/proxy/image.rs,
# which builds and runs the container image offline (runc: crun refuses hybrid cgroup v1 hosts).
# Needs root (apt-get) only to install.
set -euo pipefail
packages=()
if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
    packages+=(prometheus)
fi
if ! /usr/bin/python3 -c 'import grpc' 2>/dev/null; then
    packages+=(python3-grpcio)
fi
for tool in openssl curl podman runc; do
    if ! command -v "$tool" >/dev/null; then
        packages+=("$tool")
    fi
done
if ((${#packages[@]})); then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${packages[@]}"
fi
