#!/usr/bin/env bash
# Print the path of a usable `promtool` (Prometheus's rule and metrics checker), which the tests of
# deploy/prometheus/ run. Uses one on PATH when there is one; otherwise takes it from Debian's
# `prometheus` package without installing the package (which would also install and start the
# Prometheus daemon): `apt-get download` + `dpkg -x` into .tools/prometheus/.
set -euo pipefail
cd "$(dirname "$0")/.."
LOCAL=".tools/prometheus/usr/bin/promtool"
for candidate in "$(command -v promtool 2>/dev/null || true)" "$LOCAL"; do
  if [ -n "$candidate" ] && [ -x "$candidate" ]; then
    echo "$candidate"
    exit 0
  fi
done
echo "promtool not found; extracting it from Debian's prometheus package" >&2
if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
if ! (cd "$WORK" && apt-get download prometheus >&2 2>/dev/null); then
  $SUDO apt-get update -qq >&2
  (cd "$WORK" && apt-get download prometheus >&2)
fi
mkdir -p .tools/prometheus
dpkg -x "$WORK"/prometheus_*.deb .tools/prometheus
"$LOCAL" --version >&2
echo "$LOCAL"
