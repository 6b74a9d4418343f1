#!/usr/bin/env bash
# Vigil end to end: set up, generate the world, build features, feast apply + materialize into a
# private redis-server, train, start the stack, score sample transactions, stop. Extra arguments
# go to `vigil demo` (e.g. --transactions 50000).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/vigil demo "$@"
