"""Stage decoder_base@<pair>: the base model's side of the decoder grid (its measurement on the
test rows and LMS text, and the hidden states entering θ's first block), made once per base model,
data, pre-pruned space and decoder-input params and read by evaluate_decoder for every GRADIEND."""

import logging

from gradiend_core.base_model import ParamSpace, open_base
from gradiend_core.block_cache import first_edited_block
from gradiend_core.data import load_examples, load_neutral
from gradiend_core.decoder_eval import decoder_inputs, decoder_reference, save_decoder_reference
from gradiend_core.feature import feature_for_pair
from gradiend_core.params import load_params
from gradiend_core.runtime import run_stage
from gradiend_core.workspace import EXAMPLES, NEUTRAL, decoder_base_file, pre_prune_dir
from stages import stage_args

LOG = logging.getLogger("stages.decoder_base")


def main() -> None:
    name = stage_args(__doc__).pair
    params = load_params()
    settings, feature = params.evaluate_decoder, feature_for_pair(params.feature, name)
    base = open_base(params)
    examples, neutral = load_examples(EXAMPLES, feature.mask), load_neutral(NEUTRAL)
    inputs = decoder_inputs(base, examples, neutral, feature, settings, params.gradient.max_length)
    first = first_edited_block(ParamSpace.load(pre_prune_dir(name)))
    reference = decoder_reference(base, inputs.probe, inputs.lms_set, settings.batch_size, first)
    save_decoder_reference(reference, decoder_base_file(name))
    reused = (
        f"states entering block {reference.first} for {len(reference.states)} batches"
        if reference.first is not None
        else "no lower-block states (every grid point runs full passes)"
    )
    LOG.info(
        "%s: base LMS %.4f; %s -> %s",
        name,
        reference.base_point["lms"],
        reused,
        decoder_base_file(name),
    )


if __name__ == "__main__":
    run_stage("decoder_base", main)
