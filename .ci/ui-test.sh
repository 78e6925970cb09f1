#!/usr/bin/env bash
# The browser test on a fresh Debian machine: Debian's Chromium, Playwright for Python in .venv, then
# the `ui` tests (Airflow's API server and the Capillary stand-in on 127.0.0.1, headless Chromium).
# Then the documentation site CI built before (docs/_build/html). Screenshots land in artifacts/ui/.
set -euo pipefail
cd "$(dirname "$0")/.."

CHROMIUM="${CAPILLARY_UI_CHROMIUM:-/usr/bin/chromium}"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

if [ ! -x "$CHROMIUM" ]; then
    $SUDO apt-get update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
fi
"$CHROMIUM" --version

make venv
# Playwright drives the Chromium above; no `playwright install` browser download.
.venv/bin/python -m pip install --quiet 'playwright>=1.49'
.venv/bin/python -c "import playwright.sync_api"

mkdir -p artifacts/ui
CAPILLARY_UI_CHROMIUM="$CHROMIUM" .venv/bin/python -m pytest -m ui tests/ui -ra
echo "==> Screenshots: $(ls artifacts/ui/*.png | tr '\n' ' ')"
