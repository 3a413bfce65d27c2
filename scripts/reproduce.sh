#!/usr/bin/env bash
# Set up everything and run the default pipeline offline: `dvc repro`, then show the metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 DVC_NO_ANALYTICS=1
dvc repro "$@"
dvc metrics show
