"""Stage evaluate_decoder: grid of feature factor x learning rate, LMS-constrained selection."""

import logging

import pandas as pd

from gradiend_core.data import load_examples, take_balanced
from gradiend_core.evaluate import build_lms_set, build_probe_set, decoder_grid, select
from gradiend_core.io import read_parquet, write_json, write_with
from gradiend_core.model import load_gradiend
from gradiend_core.modeling import open_base
from gradiend_core.params import load_params
from gradiend_core.plots import decoder_heatmap, probability_shift
from gradiend_core.runtime import run_stage
from gradiend_core.workspace import EXAMPLES, METRICS, NEUTRAL, PLOTS, SELECTED

LOG = logging.getLogger("stages.evaluate_decoder")


def grid_table(points: list[dict], base_point: dict, classes: list[str]) -> pd.DataFrame:
    def mean_p(point: dict, c: str) -> float:
        return sum(point["probs_by_dataset"][d][c] for d in classes) / len(classes)

    rows = []
    for p in points:
        row = {"feature_factor": p["feature_factor"], "learning_rate": p["learning_rate"], "lms": p["lms"], "lms_ratio": p["lms"] / base_point["lms"]}
        row.update({f"p_{c}_on_{d}": p["probs_by_dataset"][d][c] for c in classes for d in classes})
        row.update({f"delta_p_{c}": mean_p(p, c) - mean_p(base_point, c) for c in classes})
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    params = load_params()
    d, f = params.evaluate_decoder, params.feature
    gradiend, space, context = load_gradiend(SELECTED)
    base = open_base(params)
    gradiend.to(base.device)
    rows = take_balanced(load_examples(EXAMPLES, f.mask), "test", f.classes, d.max_per_class)
    probe = build_probe_set(base, rows, f.classes, f.targets, f.mask, params.gradient.max_length)
    lms_set = build_lms_set(base, read_parquet(NEUTRAL, ["text"], "neutral sentences")["text"].tolist()[: d.neutral_size], params.gradient.max_length)
    base_point, points = decoder_grid(base, gradiend, space, probe, lms_set, d.feature_factors, d.learning_rates, d.batch_size)
    selection = select(points, base_point, context, d.lms_ratio)
    write_json(METRICS / "evaluate_decoder.json", {"base": base_point, "selection": selection, "grid_points": len(points), "lms_ratio_threshold": d.lms_ratio, "test_rows": len(rows), "lms_texts": len(lms_set.sequences)})
    table = grid_table(points, base_point, f.classes)
    out = PLOTS / "evaluate_decoder"
    write_with(out / "grid.csv", lambda tmp: table.to_csv(tmp, index=False))
    decoder_heatmap(table, f.classes, out / "heatmap.png")
    probability_shift(table, base_point, f.classes, selection, out / "probability_shift.png")
    for key, chosen in selection.items():
        if chosen:
            LOG.info("%s: %.4f -> %.4f at f=%+g, lr=%g (LMS ratio %.4f, constraint met: %s)", key, chosen["base_value"], chosen["value"], chosen["feature_factor"], chosen["learning_rate"], chosen["lms_ratio"], chosen["constraint_met"])


if __name__ == "__main__":
    run_stage("evaluate_decoder", main)
