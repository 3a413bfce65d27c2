"""Stage evaluate_encoder: encode test-split gradients and neutral rows with the selected GRADIEND."""

import logging

import pandas as pd

from gradiend_core.data import load_examples, take_balanced
from gradiend_core.evaluate import encode_examples, encode_neutral, encoder_metrics
from gradiend_core.gradients import open_computer
from gradiend_core.io import read_parquet, write_json, write_with
from gradiend_core.model import load_gradiend
from gradiend_core.modeling import open_base
from gradiend_core.params import load_params
from gradiend_core.plots import encodings
from gradiend_core.runtime import run_stage, seed_everything
from gradiend_core.workspace import EXAMPLES, METRICS, NEUTRAL, PLOTS, SELECTED

LOG = logging.getLogger("stages.evaluate_encoder")


def main() -> None:
    params = load_params()
    e, f = params.evaluate_encoder, params.feature
    seed_everything(e.seed)
    gradiend, space, context = load_gradiend(SELECTED)
    base = open_base(params)
    computer = open_computer(params, base, space)
    gradiend.to(base.device)
    test = take_balanced(load_examples(EXAMPLES, f.mask), "test", f.classes, e.max_per_class)
    neutral = read_parquet(NEUTRAL, ["text"], "neutral sentences")["text"].tolist()[: e.neutral_size]
    frame = pd.concat([encode_examples(computer, gradiend, test, f.classes, context.source), encode_neutral(computer, gradiend, neutral, e.seed)], ignore_index=True)
    metrics = encoder_metrics(frame, f.classes)
    write_json(METRICS / "evaluate_encoder.json", {**metrics, "source": context.source, "objective": context.objective})
    write_with(PLOTS / "evaluate_encoder" / "encodings.csv", lambda tmp: frame.to_csv(tmp, index=False))
    encodings(frame, f.classes, PLOTS / "evaluate_encoder" / "encodings.png")
    LOG.info("encoder: test correlation %.3f, accuracy %.3f, neutral |mean| %s", metrics["correlation"], metrics["accuracy"], metrics["neutral"]["abs_mean"])


if __name__ == "__main__":
    run_stage("evaluate_encoder", main)
