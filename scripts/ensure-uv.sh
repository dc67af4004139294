#!/usr/bin/env bash
# Print the path of a usable `uv`, installing it from PyPI first when there is none:
# with pip --user where the interpreter allows it, else into a private venv in .tools/.
set -euo pipefail
cd "$(dirname "$0")/.."
for candidate in "$(command -v uv 2>/dev/null || true)" "$HOME/.local/bin/uv" ".tools/bin/uv"; do
  if [ -n "$candidate" ] && [ -x "$candidate" ]; then
    echo "$candidate"
    exit 0
  fi
done
echo "uv not found; installing it from PyPI" >&2
if python3 -m pip install --user --quiet uv >&2 2>/dev/null && [ -x "$HOME/.local/bin/uv" ]; then
  echo "$HOME/.local/bin/uv"
  exit 0
fi
python3 -m venv .tools >&2
.tools/bin/pip install --quiet uv >&2
echo ".tools/bin/uv"
