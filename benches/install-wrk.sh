#!/usr/bin/env bash
# Installs wrk, the HTTP load generator the ingest and sustained benches
# use when it is on the PATH (Debian's package; needs root).
set -euo pipefail
if command -v wrk >/dev/null 2>&1; then
  echo "wrk is already installed: $(command -v wrk)"
  exit 0
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk
command -v wrk
