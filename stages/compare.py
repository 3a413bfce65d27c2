"""Stage compare: every pair of trained GRADIENDs (train.seeds) by their top-k base weights."""

import logging

from gradiend_core.comparison import compare_gradiends, load_gradiends, write_comparison
from gradiend_core.io import read_json
from gradiend_core.params import load_params
from gradiend_core.runtime import run_stage
from gradiend_core.workspace import METRICS, PLOTS, gradiend_dir, train_metrics

LOG = logging.getLogger("stages.compare")


def main() -> None:
    params = load_params()
    settings, seeds = params.compare, params.train.seeds
    folders = {gradiend_dir(s).name: gradiend_dir(s) for s in seeds}
    reports = {
        gradiend_dir(s).name: read_json(train_metrics(s), f"training metrics of seed {s}")
        for s in seeds
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
