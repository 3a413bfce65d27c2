"""Post-pruning at several k: encoder correlation, neutral |mean| and the selected rewrite.

    python -m benchmarks.post_prune [--topk 1.0,0.1,0.01,0.001] [--by product]

Needs the default pipeline's outputs (``dvc repro``). For the first pair of ``feature.pairs`` it
post-prunes the selected GRADIEND in memory (``pruning.post_prune``, exactly what ``select`` does
with ``post_prune.enabled: true``), encodes the stored test and neutral vectors
(``encoder_eval.evaluate_encoder``) and runs the decoder grid with its LMS-constrained selection
(``decoder_eval.decoder_grid``/``select``, as the ``evaluate_decoder`` stage), for each k. The
rewrite's goal (``rewrite.target_class``, strengthen) is read from the grid's selection: the
``rewrite`` stage applies that point and re-measures it on the saved checkpoint. Writes
``benchmarks/results/post_prune.json`` and prints a Markdown table for the README.
"""

from __future__ import annotations

import argparse

from benchmarks.run import RESULTS
from gradiend_core.base_model import open_base
from gradiend_core.data import load_examples, load_neutral
from gradiend_core.decoder_eval import decoder_grid, decoder_inputs, select
from gradiend_core.encoder_eval import evaluate_encoder
from gradiend_core.feature import feature_for_pair
from gradiend_core.gradiend import load_gradiend
from gradiend_core.io import write_json
from gradiend_core.params import load_params
from gradiend_core.pruning import post_prune
from gradiend_core.vectors import GradientStore
from gradiend_core.workspace import EXAMPLES, NEUTRAL, gradient_store, selected_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--topk", default="1.0,0.1,0.01,0.001")
    parser.add_argument("--by", default="product", choices=["decoder", "encoder", "product"])
    args = parser.parse_args()
    params = load_params()
    pair = params.feature.pairs[0]
    feature = feature_for_pair(params.feature, pair)
    target = params.rewrite.target_class
    gradiend, space, context = load_gradiend(selected_dir(pair))
    store = GradientStore.load(gradient_store(pair), parts=("test", "neutral"))
    base = open_base(params)
    settings = params.evaluate_decoder
    examples, neutral = load_examples(EXAMPLES, feature.mask), load_neutral(NEUTRAL)
    inputs = decoder_inputs(base, examples, neutral, feature, settings, params.gradient.max_length)
    rows = []
    for k in [float(x) for x in args.topk.split(",")]:
        model = gradiend if k >= 1.0 else post_prune(gradiend, k, args.by)[0]
        kept = int((model.decoder_weight != 0).any(dim=1).sum())
        _, enc = evaluate_encoder(model, context, store)
        model.to(base.device)
        base_point, points = decoder_grid(
            base, model, space, inputs.probe, inputs.lms_set, settings
        )
        chosen = select(points, base_point, context, settings.lms_ratio)[target]
        row = {
            "topk": k,
            "kept": kept,
            "correlation": enc["correlation"],
            "neutral_abs_mean": enc["neutral"]["abs_mean"],
            "rewrite_target": target,
            "rewrite_before": chosen["base_value"] if chosen else None,
            "rewrite_after": chosen["value"] if chosen else None,
            "learning_rate": chosen["learning_rate"] if chosen else None,
            "lms_ratio": chosen["lms_ratio"] if chosen else None,
        }
        rows.append(row)
        print(row, flush=True)
    write_json(RESULTS / "post_prune.json", {"pair": pair, "by": args.by, "rows": rows})
    print(
        f"| post_prune.topk ({args.by}) | kept | test correlation | neutral \\|mean\\| |"
        f" P({target}) before → after | η | LMS ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if r["rewrite_after"] is None:
            rewrite = "no grid point meets the LMS constraint | – | –"
        else:
            rewrite = (
                f"{r['rewrite_before']:.3f} → {r['rewrite_after']:.3f} | {r['learning_rate']} | "
                f"{r['lms_ratio']:.4f}"
            )
        print(
            f"| {'off' if r['topk'] >= 1.0 else r['topk']} | {r['kept']:,} | "
            f"{r['correlation']:.4f} | {r['neutral_abs_mean']:.3f} | {rewrite} |"
        )


if __name__ == "__main__":
    main()
