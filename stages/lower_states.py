"""Stage lower_states: the hidden states entering θ's lowest block for every masked row, computed
once for the MLM head, pre-pruning and the gradient vectors (objective clm_mlm_head)."""

import logging

from gradiend_core.base_model import open_base, select_param_space
from gradiend_core.data import load_examples
from gradiend_core.lower_states import compute_row_states, save_row_states, states_block
from gradiend_core.mlm_head import mask_vector
from gradiend_core.params import load_params
from gradiend_core.runtime import run_stage
from gradiend_core.workspace import EXAMPLES, LOWER_STATES

LOG = logging.getLogger("stages.lower_states")


def main() -> None:
    params = load_params()
    grad = params.gradient
    if grad.objective != "clm_mlm_head":
        reason = f"gradient.objective is {grad.objective!r}; only 'clm_mlm_head' reads them"
        save_row_states(LOWER_STATES, None, reason)
        LOG.info("no states stored (%s): %s", reason, LOWER_STATES)
        return
    base = open_base(params)
    first = states_block(select_param_space(base.model, grad))
    states = None
    reason = "θ reaches below the transformer blocks"
    if first is not None:
        texts = load_examples(EXAMPLES, params.feature.mask)["masked"].tolist()
        model = base.model
        states = compute_row_states(
            model,
            base.tokenizer,
            texts,
            params.feature.mask,
            grad.max_length,
            grad.pooling_length,
            mask_vector(model).to(base.device),
            first,
        )
        reason = "an upper-block pass from recorded states is not exact on this model"
    save_row_states(LOWER_STATES, states, reason)
    if states is None:
        LOG.info("no states stored (%s); later stages run every block: %s", reason, LOWER_STATES)
        return
    tokens = sum(len(i) for i in states.ids)
    LOG.info(
        "states entering block %d for %d rows (%d tokens) -> %s",
        first,
        len(states.ids),
        tokens,
        LOWER_STATES,
    )


if __name__ == "__main__":
    run_stage("lower_states", main)
