#!/usr/bin/env bash
# Installs headless Chromium and its WebDriver for the web console's browser tests:
# Debian's chromium and chromium-driver packages. Does nothing when both are on PATH.
# Needs root when it installs; never reads stdin.
set -euo pipefail

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-chromium: chromium/chromedriver are not on PATH and apt-get is missing;" \
        "install Chromium and its chromedriver by hand" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q </dev/null
apt-get install -y -q --no-install-recommends chromium chromium-driver </dev/null
chromium --version
chromedriver --version
