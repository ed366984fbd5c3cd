#!/usr/bin/env bash
# Install Debian's chromium when missing: tests/test_report.py draws the report in it (headless).
# Idempotent; needs root (or sudo) only when chromium is not installed yet.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium
command -v chromium
