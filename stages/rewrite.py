"""Stage rewrite: apply the selected (f, η) and save a plain Hugging Face checkpoint, measured after saving."""

import logging
from pathlib import Path

from gradiend_core.data import load_examples, take_balanced
from gradiend_core.evaluate import build_lms_set, build_probe_set, measure
from gradiend_core.io import read_json, read_parquet, write_json
from gradiend_core.model import load_gradiend
from gradiend_core.modeling import load_base_model, open_base
from gradiend_core.params import load_params
from gradiend_core.rewrite import selection_for, write_rewritten_checkpoint
from gradiend_core.runtime import run_stage
from gradiend_core.workspace import EXAMPLES, METRICS, NEUTRAL, REWRITTEN, SELECTED

LOG = logging.getLogger("stages.rewrite")


def main() -> None:
    params = load_params()
    r, d, f, rt = params.rewrite, params.evaluate_decoder, params.feature, params.runtime
    chosen = selection_for(read_json(METRICS / "evaluate_decoder.json", "decoder evaluation"), r.target_class, r.direction)
    gradiend, space, context = load_gradiend(SELECTED)
    base = open_base(params)
    gradiend.to(base.device)
    rows = take_balanced(load_examples(EXAMPLES, f.mask), "test", f.classes, d.max_per_class)
    texts = read_parquet(NEUTRAL, ["text"], "neutral sentences")["text"].tolist()[: d.neutral_size]
    probe = build_probe_set(base, rows, f.classes, f.targets, f.mask, params.gradient.max_length)
    lms_set = build_lms_set(base, texts, params.gradient.max_length)
    before = measure(base, probe, lms_set, d.batch_size)

    def measure_saved(folder: Path) -> dict:
        saved = load_base_model(folder, rt.device, rt.dtype)
        after = measure(saved, probe, lms_set, d.batch_size)
        dataset = chosen["rows_of_class"]
        return {
            "target_class": r.target_class, "direction": r.direction, "rows_of_class": dataset,
            "feature_factor": chosen["feature_factor"], "learning_rate": chosen["learning_rate"],
            "target_probability_before": before["probs_by_dataset"][dataset][r.target_class],
            "target_probability_after": after["probs_by_dataset"][dataset][r.target_class],
            "probs_by_dataset_before": before["probs_by_dataset"], "probs_by_dataset_after": after["probs_by_dataset"],
            "lms_before": before["lms"], "lms_after": after["lms"], "lms_ratio": after["lms"] / before["lms"],
            "lms_constraint_met": after["lms"] >= d.lms_ratio * before["lms"],
        }

    metrics = write_rewritten_checkpoint(base, gradiend, space, chosen, REWRITTEN, context.__dict__, params.model.source, measure_saved)
    moved = metrics["target_probability_after"] - metrics["target_probability_before"]
    metrics["moved_in_requested_direction"] = bool(moved > 0 if r.direction == "strengthen" else moved < 0)
    write_json(METRICS / "rewrite.json", metrics)
    LOG.info("rewrite (%s %s): P %.4f -> %.4f, LMS ratio %.4f; checkpoint in %s", r.direction, r.target_class, metrics["target_probability_before"], metrics["target_probability_after"], metrics["lms_ratio"], REWRITTEN)


if __name__ == "__main__":
    run_stage("rewrite", main)
