"""Stage select: seed report over train.seeds and a copy of the best converged GRADIEND."""

import logging
import shutil

from gradiend_core.errors import GradiendError
from gradiend_core.io import atomic_dir, read_json, write_json
from gradiend_core.params import load_params
from gradiend_core.runtime import run_stage
from gradiend_core.train import select_seed
from gradiend_core.workspace import METRICS, SELECTED, gradiend_dir, train_metrics

LOG = logging.getLogger("stages.select")


def main() -> None:
    params = load_params()
    reports = []
    for seed in params.train.seeds:
        if not (gradiend_dir(seed) / "model.safetensors").exists():
            raise GradiendError(f"{gradiend_dir(seed)}: training output of seed {seed} (listed in train.seeds) is missing; run 'dvc repro train@{seed}'.")
        reports.append(read_json(train_metrics(seed), f"training metrics of seed {seed}"))
    best = select_seed(reports)
    converged = [r["seed"] for r in reports if r["converged"]]
    if not converged and params.select.fail_on_non_convergence:
        raise GradiendError(f"no seed of train.seeds {params.train.seeds} converged (best correlation {best['best_correlation']}); try more train.max_steps, another train.learning_rate, or set select.fail_on_non_convergence: false.")
    if not converged:
        LOG.warning("no seed converged; using seed %d (best correlation %s) anyway", best["seed"], best["best_correlation"])
    with atomic_dir(SELECTED) as tmp:
        shutil.copytree(gradiend_dir(best["seed"]), tmp, dirs_exist_ok=True)
    write_json(METRICS / "select.json", {
        "seeds_tried": [r["seed"] for r in reports], "convergent_seeds": converged, "convergent_count": len(converged),
        "best_seed": best["seed"], "best_correlation": best["best_correlation"], "converged": best["converged"],
        "selection_strategy": "max validation correlation among convergent seeds" if converged else "max validation correlation (no seed converged)",
        "runs": reports,
    })
    LOG.info("selected seed %d (correlation %s, converged=%s) -> %s", best["seed"], best["best_correlation"], best["converged"], SELECTED)


if __name__ == "__main__":
    run_stage("select", main)
