"""Stage train@<pair>-<seed>: train one GRADIEND of a pair on its stored gradient vectors."""

import logging

from gradiend_core.base_model import ParamSpace
from gradiend_core.feature import ClassPair
from gradiend_core.gradiend import GradiendContext, save_gradiend
from gradiend_core.io import write_csv, write_json
from gradiend_core.params import load_params, pair_classes
from gradiend_core.plots import training_curves
from gradiend_core.runtime import configure_torch, run_stage, seed_everything
from gradiend_core.training import train_gradiend
from gradiend_core.vectors import GradientStore
from gradiend_core.workspace import (
    PLOTS,
    gradiend_dir,
    gradient_store,
    pre_prune_dir,
    train_metrics,
)
from stages import stage_args

LOG = logging.getLogger("stages.train")


def main() -> None:
    args = stage_args(__doc__, seed=True)
    name, seed = args.pair, args.seed
    params = load_params()
    t = params.train
    pair = ClassPair.of(pair_classes(name))
    configure_torch(params.runtime.num_threads)
    seed_everything(seed)
    space = ParamSpace.load(pre_prune_dir(name))
    store = GradientStore.load(gradient_store(name))
    result = train_gradiend(store, pair, t, seed)
    context = GradiendContext(
        pair.classes, t.source, t.target, params.gradient.objective, "models/base"
    )
    report = result.report(seed, space.size)
    record = {"report": report, "evaluations": [e.row() for e in result.evaluations]}
    save_gradiend(gradiend_dir(name, seed), result.model, space, context, {"training.json": record})
    out = PLOTS / "train" / name / f"seed_{seed}"
    losses = {"step": list(range(1, len(result.losses) + 1)), "loss": result.losses}
    evaluations = [e.row() for e in result.evaluations]
    groups = [*pair.classes, *result.evaluations[0].other_means]
    write_csv(out / "loss.csv", losses)
    write_csv(out / "eval.csv", evaluations)
    training_curves(losses, evaluations, groups, report["best_step"], out / "curves.png")
    write_json(train_metrics(name, seed), report)
    LOG.info(
        "%s seed %d: %s (best correlation %s at step %s); GRADIEND saved to %s",
        name,
        seed,
        report["diagnosis"],
        report["best_correlation"],
        report["best_step"],
        gradiend_dir(name, seed),
    )


if __name__ == "__main__":
    run_stage("train", main)
