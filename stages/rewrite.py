"""Stage rewrite@<pair>: apply the selected (f, η) and save a plain Hugging Face checkpoint; its
metrics are those of the saved files (the grid's measurement of the point once the reloaded
weights are checked to equal the measured edit)."""

import dataclasses
import logging

from gradiend_core.base_model import open_base
from gradiend_core.data import load_examples, load_neutral
from gradiend_core.decoder_eval import decoder_inputs
from gradiend_core.feature import ClassPair, feature_for_pair
from gradiend_core.gradiend import load_gradiend
from gradiend_core.io import read_csv, read_json, write_json
from gradiend_core.params import load_params
from gradiend_core.rewrite import (
    grid_measurement,
    rewrite_checkpoint,
    rewrite_summary,
    selection_for,
)
from gradiend_core.runtime import run_stage
from gradiend_core.workspace import (
    EXAMPLES,
    NEUTRAL,
    pair_metrics,
    pair_plots,
    rewritten_dir,
    selected_dir,
)
from stages import stage_args

LOG = logging.getLogger("stages.rewrite")


def main() -> None:
    name = stage_args(__doc__).pair
    params = load_params()
    settings, decoder = params.rewrite, params.evaluate_decoder
    feature = feature_for_pair(params.feature, name)
    pair = ClassPair.of_feature(feature)
    target = settings.target_class
    if target not in pair:
        LOG.info("%s: rewrite.target_class %r is not in this pair; using %r", name, target, pair.a)
        target = pair.a
        settings = dataclasses.replace(settings, target_class=target)
    max_length = params.gradient.max_length
    grid_file = pair_metrics("evaluate_decoder", name)
    decoder_metrics = read_json(grid_file, "decoder evaluation")
    chosen = selection_for(decoder_metrics, target, settings.direction, grid_file.as_posix())
    gradiend, space, context = load_gradiend(selected_dir(name))
    base = open_base(params)
    gradiend.to(base.device)
    examples, neutral = load_examples(EXAMPLES, feature.mask), load_neutral(NEUTRAL)
    inputs = decoder_inputs(base, examples, neutral, feature, decoder, max_length)
    probe, lms_set = inputs.probe, inputs.lms_set
    table = read_csv(pair_plots("evaluate_decoder", name) / "grid.csv", "the decoder grid")
    measured = grid_measurement(table, chosen, pair.classes)
    metrics = rewrite_checkpoint(
        base,
        gradiend,
        space,
        context,
        chosen,
        probe,
        lms_set,
        settings=settings,
        decoder=decoder,
        runtime=params.runtime,
        base_source=params.model.source,
        out_dir=rewritten_dir(name),
        before=decoder_metrics["base"],  # the grid's base point: the same measurement, reused
        measured=measured,  # the grid's measurement of the chosen point (checked: same weights)
    )
    write_json(pair_metrics("rewrite", name), metrics)
    LOG.info("%s; checkpoint in %s", rewrite_summary(metrics), rewritten_dir(name))


if __name__ == "__main__":
    run_stage("rewrite", main)
