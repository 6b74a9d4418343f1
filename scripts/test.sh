#!/usr/bin/env bash
# Run Vigil's whole test suite (sets the machine up first). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
VIGIL_WITH_BROWSER=1 bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
