"""Stage select: seed report over train.seeds and a copy of the best GRADIEND."""

import logging
import shutil

from gradiend_core.errors import GradiendError
from gradiend_core.io import atomic_dir, read_json, write_json
from gradiend_core.params import load_params
from gradiend_core.runtime import run_stage
from gradiend_core.selection import seed_summary
from gradiend_core.workspace import METRICS, SELECTED, gradiend_dir, train_metrics

LOG = logging.getLogger("stages.select")


def main() -> None:
    params = load_params()
    seeds = params.train.seeds
    reports = []
    for seed in seeds:
        if not (gradiend_dir(seed) / "model.safetensors").exists():
            raise GradiendError(
                f"{gradiend_dir(seed)}: training output of seed {seed} (listed in train.seeds) is "
                f"missing; run 'dvc repro train@{seed}'."
            )
        reports.append(read_json(train_metrics(seed), f"training metrics of seed {seed}"))
    summary = seed_summary(reports)
    if not summary["convergent_seeds"]:
        if params.select.fail_on_non_convergence:
            raise GradiendError(
                f"no seed of train.seeds {seeds} converged (best correlation "
                f"{summary['best_correlation']}); try more train.max_steps, another "
                "train.learning_rate, or set select.fail_on_non_convergence: false."
            )
        LOG.warning("no seed converged; using seed %d anyway", summary["best_seed"])
    with atomic_dir(SELECTED) as tmp:
        shutil.copytree(gradiend_dir(summary["best_seed"]), tmp, dirs_exist_ok=True)
    write_json(METRICS / "select.json", summary)
    LOG.info(
        "selected seed %d (correlation %s, converged=%s) -> %s",
        summary["best_seed"],
        summary["best_correlation"],
        summary["converged"],
        SELECTED,
    )


if __name__ == "__main__":
    run_stage("select", main)
