#!/usr/bin/env bash
# Set up everything and run the default pipeline offline: `dvc repro`, then show the metrics.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
export PATH="$PWD/.venv/bin:$PATH" HF_HUB_OFFLINE=1 DVC_NO_ANALYTICS=1
dvc repro "$@"
# A readable summary (the full table: `dvc metrics show`).
python - <<'PY'
import json, yaml
m = lambda name: json.load(open(f"metrics/{name}.json"))
pairs = yaml.safe_load(open("params.yaml"))["feature"]["pairs"]
s, e = m("select"), m("evaluate_encoder")
for pair in pairs:
    ps = s if pair == pairs[0] else {**s, **s["pairs"][pair]}
    pe = e if pair == pairs[0] else {**e, **e["pairs"][pair]}
    r = m(f"rewrite/{pair}")
    print(f"{pair}:")
    print(f"  select:           best seed {ps['best_seed']}, converged {ps['convergent_count']} of {ps['trained_count']}, validation correlation {ps['best_correlation']:.4f}")
    neutral = pe["neutral"]["abs_mean"] if pair == pairs[0] else pe["neutral_abs_mean"]
    print(f"  evaluate_encoder: test correlation {pe['correlation']:.4f}, accuracy {pe['accuracy']:.3f}, neutral |mean| {neutral:.3f}")
    if r["direction"] == "balance":
        change = f"balance gap {r['balance_gap_before']:.4f} -> {r['balance_gap_after']:.4f}"
    else:
        change = f"P {r['target_probability_before']:.4f} -> {r['target_probability_after']:.4f}"
    print(f"  rewrite:          {r['direction']} {r['target_class']!r}: {change}, LMS ratio {r['lms_ratio']:.4f}; checkpoint in models/rewritten/{pair}/")
PY
