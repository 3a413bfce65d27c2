#!/usr/bin/env bash
# Run one documented example end to end (offline) and record its results in examples/results.json
# and the README's examples table: bash scripts/example.sh <name> (names: examples/*.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 DVC_NO_ANALYTICS=1
python -m examples.run "$@"
