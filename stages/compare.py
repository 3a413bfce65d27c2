"""Stage compare: every two trained GRADIENDs (each pair of feature.pairs x train.seeds) by their
top-k base weights."""

import logging

from gradiend_core.comparison import compare_gradiends, load_gradiends, write_comparison
from gradiend_core.io import read_json
from gradiend_core.params import load_params
from gradiend_core.runtime import run_stage
from gradiend_core.workspace import METRICS, PLOTS, gradiend_dir, train_metrics

LOG = logging.getLogger("stages.compare")


def main() -> None:
    params = load_params()
    settings, seeds, pairs = params.compare, params.train.seeds, params.feature.pairs

    def label(pair: str, seed: int) -> str:
        """``seed_0`` for a one-pair feature, ``he-she/seed_0`` in a suite."""
        return f"seed_{seed}" if len(pairs) == 1 else f"{pair}/seed_{seed}"

    runs = [(p, s) for p in pairs for s in seeds]
    folders = {label(p, s): gradiend_dir(p, s) for p, s in runs}
    reports = {
        label(p, s): read_json(train_metrics(p, s), f"training metrics of {p} seed {s}")
        for p, s in runs
    }
    result = compare_gradiends(load_gradiends(folders), settings.topk, settings.part, reports)
    write_comparison(result, PLOTS / "compare", METRICS / "compare.json")
    metrics = result.metrics()
    LOG.info(
        "%d GRADIENDs, top-%d by %s: mean overlap %s, mean decoder cosine %s",
        len(result.labels),
        settings.topk,
        settings.part,
        metrics["mean_overlap"],
        metrics["mean_cosine"],
    )


if __name__ == "__main__":
    run_stage("compare", main)
