#!/usr/bin/env bash
# Installs Debian's headless-capable Chromium when it is missing: tests/cluster/test_cluster_view.py renders
# the cluster's HTML view in it (and fails, not skips, under CI=true when it is absent). Idempotent.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    echo "chromium already installed: $(command -v chromium)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends chromium
command -v chromium
