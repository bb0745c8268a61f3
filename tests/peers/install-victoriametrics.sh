#!/usr/bin/env bash
# Unpack Debian's VictoriaMetrics (1.79 on Debian 12) into .cache/peers/victoriametrics for the tests.
#
# The package carries both the single-node server (usr/bin/victoria-metrics), which the end-to-end tests
# use as a remote-write receiver, and vmagent (usr/bin/vmagent), which the benchmark runs as a sender to
# compare with. Idempotent: does nothing when both binaries are already there and run. Nothing is installed
# on the system: the .deb is downloaded with `apt-get download` and unpacked with `dpkg -x`, so no
# root-owned service, user or unit appears. The tests start the binaries themselves
# (tests/peers/victoriametrics.py).
set -euo pipefail

root="$(cd "$(dirname "$0")/../.." && pwd)"
dest="$root/.cache/peers/victoriametrics"
server="$dest/usr/bin/victoria-metrics"
agent="$dest/usr/bin/vmagent"

runs() {
    [ -x "$1" ] && "$1" -version >/dev/null 2>&1
}

if runs "$server" && runs "$agent"; then
    exit 0
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"

if ! apt-get download victoria-metrics >/dev/null 2>&1; then
    # A stale or empty package index is the usual cause; refresh it once and retry.
    apt-get update >/dev/null
    apt-get download victoria-metrics >/dev/null
fi

rm -rf "$dest"
mkdir -p "$dest"
dpkg -x victoria-metrics_*.deb "$dest"

for binary in "$server" "$agent"; do
    runs "$binary" || {
        echo "install-victoriametrics: $binary was unpacked but does not run" >&2
        exit 1
    }
done
# Debian's build prints an empty line for -version, so the package's own version is what names it.
echo "install-victoriametrics: victoria-metrics and vmagent $(dpkg-deb -f victoria-metrics_*.deb Version) in $dest"
