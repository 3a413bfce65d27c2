"""Stage select: seed report per pair of feature.pairs over train.seeds, and each pair's best
GRADIEND (post-pruned when post_prune.enabled)."""

import logging

from gradiend_core.errors import GradiendError
from gradiend_core.io import read_json, write_json
from gradiend_core.params import load_params
from gradiend_core.runtime import run_stage
from gradiend_core.selection import save_selected, seed_summary, suite_metrics
from gradiend_core.workspace import METRICS, gradiend_dir, selected_dir, train_metrics

LOG = logging.getLogger("stages.select")


def select_pair(pair: str, seeds: list[int], params) -> dict:
    reports = []
    for seed in seeds:
        if not (gradiend_dir(pair, seed) / "model.safetensors").exists():
            raise GradiendError(
                f"{gradiend_dir(pair, seed)}: training output of seed {seed} (listed in "
                f"train.seeds) is missing; run 'dvc repro train@{pair}-{seed}'."
            )
        reports.append(read_json(train_metrics(pair, seed), f"training metrics of {pair} {seed}"))
    summary = seed_summary(reports)
    if not summary["convergent_seeds"]:
        if params.select.fail_on_non_convergence:
            raise GradiendError(
                f"{pair}: no seed of train.seeds {seeds} converged (best correlation "
                f"{summary['best_correlation']}); try more train.max_steps, another "
                "train.learning_rate, or set select.fail_on_non_convergence: false."
            )
        LOG.warning("%s: no seed converged; using seed %d anyway", pair, summary["best_seed"])
    summary["post_prune"] = save_selected(
        gradiend_dir(pair, summary["best_seed"]), selected_dir(pair), params.post_prune
    )
    if summary["post_prune"]:
        LOG.info(
            "%s post-pruned: kept %d of %d coordinates by %s",
            pair,
            summary["post_prune"]["kept"],
            summary["post_prune"]["input_dim"],
            summary["post_prune"]["by"],
        )
    LOG.info(
        "%s: selected seed %d (correlation %s, converged=%s) -> %s",
        pair,
        summary["best_seed"],
        summary["best_correlation"],
        summary["converged"],
        selected_dir(pair),
    )
    return summary


def main() -> None:
    params = load_params()
    seeds = params.train.seeds
    summaries = {pair: select_pair(pair, seeds, params) for pair in params.feature.pairs}
    write_json(METRICS / "select.json", suite_metrics(summaries))


if __name__ == "__main__":
    run_stage("select", main)
