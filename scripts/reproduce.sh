#!/usr/bin/env bash
# Set up everything and run the default pipeline offline: `dvc repro`, then show the metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 DVC_NO_ANALYTICS=1
dvc repro "$@"
# A readable summary (the full table: `dvc metrics show`).
python - <<'PY'
import json
m = lambda name: json.load(open(f"metrics/{name}.json"))
s, e, r = m("select"), m("evaluate_encoder"), m("rewrite")
print(f"select:           best seed {s['best_seed']}, converged seeds {s['convergent_seeds']}, validation correlation {s['best_correlation']:.4f}")
print(f"evaluate_encoder: test correlation {e['correlation']:.4f}, accuracy {e['accuracy']:.3f}, neutral |mean| {e['neutral']['abs_mean']:.3f}")
if r["direction"] == "balance":
    change = f"balance gap {r['balance_gap_before']:.4f} -> {r['balance_gap_after']:.4f}"
else:
    change = f"P {r['target_probability_before']:.4f} -> {r['target_probability_after']:.4f}"
print(f"rewrite:          {r['direction']} {r['target_class']!r}: {change}, LMS ratio {r['lms_ratio']:.4f}; checkpoint in models/rewritten/")
PY
