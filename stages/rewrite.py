"""Stage rewrite: apply the selected (f, η) and save a plain Hugging Face checkpoint, measured
after saving."""

import logging

from gradiend_core.base_model import open_base
from gradiend_core.data import load_examples, load_neutral
from gradiend_core.decoder_eval import decoder_inputs
from gradiend_core.gradiend import load_gradiend
from gradiend_core.io import read_json, write_json
from gradiend_core.params import load_params
from gradiend_core.rewrite import rewrite_checkpoint, rewrite_summary, selection_for
from gradiend_core.runtime import run_stage
from gradiend_core.workspace import EXAMPLES, METRICS, NEUTRAL, REWRITTEN, SELECTED

LOG = logging.getLogger("stages.rewrite")


def main() -> None:
    params = load_params()
    settings, decoder, feature = params.rewrite, params.evaluate_decoder, params.feature
    max_length = params.gradient.max_length
    decoder_metrics = read_json(METRICS / "evaluate_decoder.json", "decoder evaluation")
    chosen = selection_for(decoder_metrics, settings.target_class, settings.direction)
    gradiend, space, context = load_gradiend(SELECTED)
    base = open_base(params)
    gradiend.to(base.device)
    examples, neutral = load_examples(EXAMPLES, feature.mask), load_neutral(NEUTRAL)
    inputs = decoder_inputs(base, examples, neutral, feature, decoder, max_length)
    probe, lms_set = inputs.probe, inputs.lms_set
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
        out_dir=REWRITTEN,
    )
    write_json(METRICS / "rewrite.json", metrics)
    LOG.info("%s; checkpoint in %s", rewrite_summary(metrics), REWRITTEN)


if __name__ == "__main__":
    run_stage("rewrite", main)
