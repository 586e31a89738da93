#!/usr/bin/env bash
# Installs etcd (the coordinator of automatic failover) for tests and benchmarks:
# Debian's etcd-server package, etcd 3.4 or newer. Does nothing when etcd is on PATH.
# Needs root when it installs; never reads stdin.
set -euo pipefail

if command -v etcd >/dev/null 2>&1; then
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-etcd: etcd is not on PATH and apt-get is missing; install etcd 3.4+ by hand" >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -q </dev/null
apt-get install -y -q --no-install-recommends etcd-server </dev/null
# The package starts an etcd service where a service manager runs; tests start their own.
etcd --version
