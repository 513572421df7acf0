#!/usr/bin/env bash
# Install the studio into .venv and start it on the shipped tiny models (nothing to download).
# Extra arguments go to app.py, e.g. scripts/start.sh --port 7861
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt
exec .venv/bin/python app.py "$@"
