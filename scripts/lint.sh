#!/usr/bin/env bash
# Lint and type-check Vigil with the project's .venv (ruff and mypy, configured in pyproject.toml):
# ruff check, ruff format --check, mypy. Runs all three and fails if any failed.
# Extra arguments go to `ruff check` (e.g. --statistics).
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1

failed=()
echo "[lint] ruff check" >&2
.venv/bin/ruff check "$@" . || failed+=("ruff check")
echo "[lint] ruff format --check" >&2
.venv/bin/ruff format --check --output-format concise . || failed+=("ruff format --check")
echo "[lint] mypy" >&2
.venv/bin/mypy || failed+=("mypy")

if [ ${#failed[@]} -gt 0 ]; then
  echo "[lint] failed: ${failed[*]}" >&2
  exit 1
fi
echo "[lint] clean" >&2
