"""Stage train@<seed>: train one GRADIEND on the pre-pruned gradient vector."""

import argparse
import logging

from gradiend_core.base_model import ParamSpace, open_base
from gradiend_core.data import load_examples, take_balanced
from gradiend_core.feature import ClassPair
from gradiend_core.gradiend import GradiendContext, save_gradiend
from gradiend_core.gradients import open_computer
from gradiend_core.io import write_csv, write_json
from gradiend_core.params import load_params
from gradiend_core.plots import training_curves
from gradiend_core.runtime import run_stage, seed_everything
from gradiend_core.training import train_gradiend
from gradiend_core.workspace import EXAMPLES, PLOTS, PRE_PRUNE, gradiend_dir, train_metrics

LOG = logging.getLogger("stages.train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, required=True)
    seed = parser.parse_args().seed
    params = load_params()
    t, f = params.train, params.feature
    seed_everything(seed)
    base = open_base(params)
    space = ParamSpace.load(PRE_PRUNE)
    examples = load_examples(EXAMPLES, f.mask)
    validation = take_balanced(examples, "validation", f.classes, t.eval_max_per_class)
    train_rows = examples[examples["split"] == "train"]
    computer = open_computer(params, base, space)
    result = train_gradiend(computer, train_rows, validation, ClassPair.of(f.classes), t, seed)
    context = GradiendContext(
        f.classes, t.source, t.target, params.gradient.objective, "models/base"
    )
    report = result.report(seed, space.size)
    record = {"report": report, "evaluations": [e.row() for e in result.evaluations]}
    save_gradiend(gradiend_dir(seed), result.model, space, context, {"training.json": record})
    out = PLOTS / "train" / f"seed_{seed}"
    losses = {"step": list(range(1, len(result.losses) + 1)), "loss": result.losses}
    evaluations = [e.row() for e in result.evaluations]
    write_csv(out / "loss.csv", losses)
    write_csv(out / "eval.csv", evaluations)
    training_curves(losses, evaluations, f.classes, report["best_step"], out / "curves.png")
    write_json(train_metrics(seed), report)
    LOG.info(
        "seed %d: best correlation %s at step %s, converged=%s; GRADIEND saved to %s",
        seed,
        report["best_correlation"],
        report["best_step"],
        result.converged,
        gradiend_dir(seed),
    )


if __name__ == "__main__":
    run_stage("train", main)
