"""Stage train@<seed>: train one GRADIEND on the stored gradient vectors."""

import argparse
import logging

from gradiend_core.base_model import ParamSpace
from gradiend_core.feature import ClassPair
from gradiend_core.gradiend import GradiendContext, save_gradiend
from gradiend_core.io import write_csv, write_json
from gradiend_core.params import load_params
from gradiend_core.plots import training_curves
from gradiend_core.runtime import configure_torch, run_stage, seed_everything
from gradiend_core.training import train_gradiend
from gradiend_core.vectors import GradientStore
from gradiend_core.workspace import GRADIENT_STORE, PLOTS, PRE_PRUNE, gradiend_dir, train_metrics

LOG = logging.getLogger("stages.train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, required=True)
    seed = parser.parse_args().seed
    params = load_params()
    t = params.train
    pair = ClassPair.of_feature(params.feature)
    configure_torch(params.runtime.num_threads)
    seed_everything(seed)
    space = ParamSpace.load(PRE_PRUNE)
    store = GradientStore.load(GRADIENT_STORE)
    result = train_gradiend(store, pair, t, seed)
    context = GradiendContext(
        pair.classes, t.source, t.target, params.gradient.objective, "models/base"
    )
    report = result.report(seed, space.size)
    record = {"report": report, "evaluations": [e.row() for e in result.evaluations]}
    save_gradiend(gradiend_dir(seed), result.model, space, context, {"training.json": record})
    out = PLOTS / "train" / f"seed_{seed}"
    losses = {"step": list(range(1, len(result.losses) + 1)), "loss": result.losses}
    evaluations = [e.row() for e in result.evaluations]
    groups = [*pair.classes, *result.evaluations[0].other_means]
    write_csv(out / "loss.csv", losses)
    write_csv(out / "eval.csv", evaluations)
    training_curves(losses, evaluations, groups, report["best_step"], out / "curves.png")
    write_json(train_metrics(seed), report)
    LOG.info(
        "seed %d: %s (best correlation %s at step %s); GRADIEND saved to %s",
        seed,
        report["diagnosis"],
        report["best_correlation"],
        report["best_step"],
        gradiend_dir(seed),
    )


if __name__ == "__main__":
    run_stage("train", main)
