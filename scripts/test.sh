#!/usr/bin/env bash
# Install everything the tests need into .venv (and Debian's chromium for the browser tests), then run them.
# Extra arguments go to pytest, e.g. scripts/test.sh -k parity
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt

if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = "0" ]; then
        echo "Installing Debian's chromium for the browser tests..."
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
            || echo "warning: chromium could not be installed; browser tests will be skipped"
    else
        echo "warning: /usr/bin/chromium is missing and this is not root; browser tests will be skipped"
    fi
fi

exec .venv/bin/python -m pytest "$@"
