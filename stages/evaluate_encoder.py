"""Stage evaluate_encoder: encode test-split gradients and neutral rows with the selected
GRADIEND."""

import logging

from gradiend_core.base_model import open_base
from gradiend_core.data import load_examples, load_neutral, take_balanced
from gradiend_core.encoder_eval import evaluate_encoder
from gradiend_core.gradiend import load_gradiend
from gradiend_core.gradients import open_computer
from gradiend_core.io import write_csv, write_json
from gradiend_core.params import load_params
from gradiend_core.plots import encodings
from gradiend_core.runtime import run_stage, seed_everything
from gradiend_core.workspace import EXAMPLES, METRICS, NEUTRAL, PLOTS, SELECTED

LOG = logging.getLogger("stages.evaluate_encoder")


def main() -> None:
    params = load_params()
    settings, feature = params.evaluate_encoder, params.feature
    seed_everything(settings.seed)
    gradiend, space, context = load_gradiend(SELECTED)
    base = open_base(params)
    computer = open_computer(params, base, space)
    gradiend.to(base.device)
    examples = load_examples(EXAMPLES, feature.mask)
    test = take_balanced(examples, "test", feature.classes, settings.max_per_class)
    neutral = load_neutral(NEUTRAL)[: settings.neutral_size]
    frame, metrics = evaluate_encoder(computer, gradiend, context, test, neutral, settings.seed)
    write_json(METRICS / "evaluate_encoder.json", metrics)
    write_csv(PLOTS / "evaluate_encoder" / "encodings.csv", frame)
    encodings(frame, feature.classes, PLOTS / "evaluate_encoder" / "encodings.png")
    LOG.info(
        "encoder: test correlation %.3f, accuracy %.3f, neutral |mean| %s",
        metrics["correlation"],
        metrics["accuracy"],
        metrics["neutral"]["abs_mean"],
    )


if __name__ == "__main__":
    run_stage("evaluate_encoder", main)
