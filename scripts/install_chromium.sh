#!/usr/bin/env bash
# Debian's Chromium, which the tests use to open every HTML page headless and offline (as root, as CI runs).
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium >/dev/null
chromium --version
