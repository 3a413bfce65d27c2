"""Stage train@<seed>: train one GRADIEND on the pre-pruned gradient vector."""

import argparse
import logging

import pandas as pd

from gradiend_core.data import load_examples, take_balanced
from gradiend_core.gradients import open_computer
from gradiend_core.io import write_json, write_with
from gradiend_core.model import GradiendContext, save_gradiend
from gradiend_core.modeling import ParamSpace, open_base
from gradiend_core.params import load_params
from gradiend_core.plots import training_curves
from gradiend_core.runtime import run_stage, seed_everything
from gradiend_core.train import train_gradiend
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
    computer = open_computer(params, base, space)
    result = train_gradiend(
        computer, examples[examples["split"] == "train"], take_balanced(examples, "validation", f.classes, t.eval_max_per_class), f.classes,
        source=t.source, target=t.target, learning_rate=t.learning_rate, weight_decay=t.weight_decay, batch_size=t.batch_size,
        gradiend_batch_size=t.gradiend_batch_size, max_steps=t.max_steps, eval_steps=t.eval_steps, normalize_sign=t.normalize_sign,
        convergence_threshold=t.convergence_threshold, convergence_mean_threshold=t.convergence_mean_threshold, seed=seed,
    )
    context = GradiendContext(f.classes, t.source, t.target, params.gradient.objective, "models/base")
    best = result.best
    report = {
        "seed": seed, "input_dim": space.size, "steps": t.max_steps, "converged": result.converged,
        "best_step": best.step if best else None, "best_correlation": best.correlation if best else None,
        "mean_by_class": best.mean_by_class if best else None, "final_loss": result.losses[-1], "sign_flips": sum(e.flipped for e in result.evaluations),
    }
    save_gradiend(gradiend_dir(seed), result.model, space, context, {"training.json": {"report": report, "evaluations": [e.row() for e in result.evaluations]}})
    out = PLOTS / "train" / f"seed_{seed}"
    losses = pd.DataFrame({"step": range(1, len(result.losses) + 1), "loss": result.losses})
    evals = pd.DataFrame([e.row() for e in result.evaluations])
    write_with(out / "loss.csv", lambda tmp: losses.to_csv(tmp, index=False))
    write_with(out / "eval.csv", lambda tmp: evals.to_csv(tmp, index=False))
    training_curves(losses, evals, f.classes, report["best_step"], out / "curves.png")
    write_json(train_metrics(seed), report)
    LOG.info("seed %d: best correlation %s at step %s, converged=%s; GRADIEND saved to %s", seed, report["best_correlation"], report["best_step"], result.converged, gradiend_dir(seed))


if __name__ == "__main__":
    run_stage("train", main)
