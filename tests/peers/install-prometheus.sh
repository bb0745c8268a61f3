#!/usr/bin/env bash
# Unpack Debian's Prometheus (2.42 on Debian 12) into .cache/peers/prometheus for the end-to-end tests.
#
# Idempotent: does nothing when the binary is already there and runs. Nothing is installed on the system:
# the .deb is downloaded with `apt-get download` and unpacked with `dpkg -x`, so no root-owned service,
# user or unit appears. The tests start the binary themselves (tests/peers/prometheus.py).
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
dest="$root/.cache/peers/prometheus"
binary="$dest/usr/bin/prometheus"

if [ -x "$binary" ] && "$binary" --version >/dev/null 2>&1; then
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"

if ! apt-get download prometheus >/dev/null 2>&1; then
    # A stale or empty package index is the usual cause; refresh it once and retry.
    apt-get update >/dev/null
    apt-get download prometheus >/dev/null
fi

rm -rf "$dest"
mkdir -p "$dest"
dpkg -x prometheus_*.deb "$dest"

"$binary" --version >/dev/null 2>&1 || {
    echo "install-prometheus: $binary was unpacked but does not run" >&2
    exit 1
}
echo "install-prometheus: $("$binary" --version 2>&1 | head -n 1) in $dest"
