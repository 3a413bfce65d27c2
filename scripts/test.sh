#!/usr/bin/env bash
# Set up everything and run the test suite (default tier; pass -m slow for the real-model tier).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 DVC_NO_ANALYTICS=1 GRADIEND_NO_PROGRESS=1
ruff format --check gradiend_core stages tests benchmarks scripts examples
ruff check gradiend_core stages tests benchmarks scripts examples
python -m pytest -q "$@"
