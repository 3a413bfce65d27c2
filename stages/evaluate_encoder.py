"""Stage evaluate_encoder: encode the stored test-split and neutral gradients with the selected
GRADIEND."""

import logging

from gradiend_core.encoder_eval import evaluate_encoder
from gradiend_core.gradiend import load_gradiend
from gradiend_core.io import write_csv, write_json
from gradiend_core.params import load_params
from gradiend_core.plots import encodings
from gradiend_core.runtime import configure_torch, run_stage
from gradiend_core.vectors import GradientStore
from gradiend_core.workspace import GRADIENT_STORE, METRICS, PLOTS, SELECTED

LOG = logging.getLogger("stages.evaluate_encoder")


def main() -> None:
    params = load_params()
    configure_torch(params.runtime.num_threads)
    gradiend, _, context = load_gradiend(SELECTED)
    store = GradientStore.load(GRADIENT_STORE, parts=("test", "neutral"))
    frame, metrics = evaluate_encoder(gradiend, context, store)
    write_json(METRICS / "evaluate_encoder.json", metrics)
    write_csv(PLOTS / "evaluate_encoder" / "encodings.csv", frame)
    groups = [*context.classes, *metrics["groups"]]  # the pair, then any identity classes
    encodings(frame, groups, PLOTS / "evaluate_encoder" / "encodings.png")
    LOG.info(
        "encoder: test correlation %.3f, accuracy %.3f, neutral |mean| %s",
        metrics["correlation"],
        metrics["accuracy"],
        metrics["neutral"]["abs_mean"],
    )


if __name__ == "__main__":
    run_stage("evaluate_encoder", main)
