"""Stage evaluate_encoder: encode each pair's stored test-split and neutral gradients with its
selected GRADIEND."""

import logging

from gradiend_core.encoder_eval import evaluate_encoder
from gradiend_core.gradiend import load_gradiend
from gradiend_core.io import write_csv, write_json
from gradiend_core.params import load_params
from gradiend_core.plots import encodings
from gradiend_core.runtime import configure_torch, run_stage
from gradiend_core.selection import suite_metrics
from gradiend_core.vectors import GradientStore
from gradiend_core.workspace import METRICS, gradient_store, pair_plots, selected_dir

LOG = logging.getLogger("stages.evaluate_encoder")


def main() -> None:
    params = load_params()
    configure_torch(params.runtime.num_threads)
    per_pair = {}
    for pair in params.feature.pairs:
        gradiend, _, context = load_gradiend(selected_dir(pair))
        store = GradientStore.load(gradient_store(pair), parts=("test", "neutral"))
        frame, metrics = evaluate_encoder(gradiend, context, store)
        out = pair_plots("evaluate_encoder", pair)
        write_csv(out / "encodings.csv", frame)
        groups = [*context.classes, *metrics["groups"]]  # the pair, then any identity classes
        encodings(frame, groups, out / "encodings.png")
        per_pair[pair] = metrics
        LOG.info(
            "%s encoder: test correlation %.3f, accuracy %.3f, neutral |mean| %s",
            pair,
            metrics["correlation"],
            metrics["accuracy"],
            metrics["neutral"]["abs_mean"],
        )
    write_json(METRICS / "evaluate_encoder.json", suite_metrics(per_pair, "evaluate_encoder"))


if __name__ == "__main__":
    run_stage("evaluate_encoder", main)
