#!/usr/bin/env bash
# Set up a fresh Debian machine for Vigil: Debian packages (as root) and the project's virtualenv.
# Idempotent: a second run only checks. Used by scripts/demo.sh, scripts/test.sh and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3

apt_packages=()
command -v redis-server >/dev/null 2>&1 || apt_packages+=(redis-server)
if [ "${VIGIL_WITH_BROWSER:-0}" = 1 ]; then
  command -v chromium >/dev/null 2>&1 || apt_packages+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || apt_packages+=(chromium-driver)
  # The alerting rules' tests: promtool, and a real Prometheus scraping the stack.
  command -v promtool >/dev/null 2>&1 || apt_packages+=(prometheus)
fi
if [ ${#apt_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "[setup] apt-get install ${apt_packages[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
  else
    echo "[setup] missing Debian packages (${apt_packages[*]}) and not root: continuing without them" >&2
  fi
fi

stamp=.venv/.vigil-installed
want=$(cat pyproject.toml libs/*/pyproject.toml services/*/pyproject.toml requirements/constraints.txt | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)" >&2
  "$PYTHON" -m venv .venv
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "[setup] installing Python dependencies (pinned by requirements/constraints.txt)" >&2
  log=$(mktemp)
  if ! { .venv/bin/python -m pip install -q --upgrade pip &&
         .venv/bin/python -m pip install -q -c requirements/constraints.txt \
           -e libs/contracts -e libs/servicekit -e services/encoder -e services/predictor -e services/gateway -e services/streamer -e ".[dev]"; } >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "[setup] pip install failed (full log: $log)" >&2
    exit 1
  fi
  rm -f "$log"
  echo "$want" > "$stamp"
fi
