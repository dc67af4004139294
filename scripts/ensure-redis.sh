#!/usr/bin/env bash
# Make sure a redis-server binary is available: the tests start their own servers on free ports.
# Installs Debian's package when it is missing (the only supported way here is apt-get).
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
  exit 0
fi
echo "redis-server not found; installing Debian's redis-server package" >&2
if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
command -v redis-server >/dev/null
