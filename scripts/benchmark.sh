#!/usr/bin/env bash
# Benchmarks (issue: performance): floor ratio, grid-point ratio, scaling, and the side-by-side with
# the reference package (installed into benchmarks/work/refvenv, never a dependency). Writes
# benchmarks/results/{summary,scaling,reference}.json and scaling.png. About 15-20 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 DVC_NO_ANALYTICS=1
dvc repro pre_prune            # the benchmarks read models/base, data/ and models/pre_prune
python -m benchmarks.run "$@"
python -m benchmarks.reference
