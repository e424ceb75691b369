#!/usr/bin/env bash
# Debian's Chromium, which the tests use to open every HTML page headless and offline, and poppler-utils,
# whose pdftoppm renders every PDF the tests write (as root, as CI runs).
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v pdftoppm >/dev/null 2>&1; then
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq chromium poppler-utils >/dev/null
chromium --version
pdftoppm -v 2>&1 | head -1
