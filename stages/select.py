"""Stage select: seed report over train.seeds and the best GRADIEND (post-pruned when
post_prune.enabled)."""

import logging

from gradiend_core.errors import GradiendError
from gradiend_core.io import read_json, write_json
from gradiend_core.params import load_params
from gradiend_core.runtime import run_stage
from gradiend_core.selection import save_selected, seed_summary
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
    summary["post_prune"] = save_selected(
        gradiend_dir(summary["best_seed"]), SELECTED, params.post_prune
    )
    write_json(METRICS / "select.json", summary)
    if summary["post_prune"]:
        LOG.info(
            "post-pruned: kept %(kept)d of %(input_dim)d coordinates by %(by)s",
            summary["post_prune"],
        )
    LOG.info(
        "selected seed %d (correlation %s, converged=%s) -> %s",
        summary["best_seed"],
        summary["best_correlation"],
        summary["converged"],
        SELECTED,
    )


if __name__ == "__main__":
    run_stage("select", main)
