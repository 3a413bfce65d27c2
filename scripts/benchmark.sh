#!/usr/bin/env bash
# Benchmarks: floor ratio, grid-point ratio, decoder-evaluation speedup, scaling (up to the whole
# backbone), the side-by-side with the reference package (installed into benchmarks/work/refvenv,
# never a dependency), and whole-pipeline timings from a fresh clone (benchmarks/pipeline.py).
# Writes benchmarks/results/{summary,scaling,reference}.json and scaling.png. About 40 minutes on
# 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 DVC_NO_ANALYTICS=1
dvc repro select               # the benchmarks read models/base, data/, pre_prune and selected
python -m benchmarks.run "$@"
python -m benchmarks.reference
python -m benchmarks.pipeline
