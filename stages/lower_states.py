"""Stage lower_states: the hidden states entering θ's lowest block for every masked row, computed
once for the MLM head, pre-pruning and the gradient vectors (objective clm_mlm_head)."""

import logging

from gradiend_core.base_model import open_base, select_param_space
from gradiend_core.data import load_examples
from gradiend_core.lower_states import save_row_states, stored_row_states
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
    texts = load_examples(EXAMPLES, params.feature.mask)["masked"].tolist()
    states, reason = stored_row_states(
        base.model,
        base.tokenizer,
        texts,
        params.feature.mask,
        grad,
        mask_vector(base.model).to(base.device),
        select_param_space(base.model, grad),
    )
    save_row_states(LOWER_STATES, states, reason)
    if states is None:
        LOG.info("no states stored (%s); later stages run every block: %s", reason, LOWER_STATES)
        return
    tokens = sum(len(i) for i in states.ids)
    LOG.info(
        "states entering block %d for %d rows (%d tokens) -> %s",
        states.first,
        len(states.ids),
        tokens,
        LOWER_STATES,
    )


if __name__ == "__main__":
    run_stage("lower_states", main)
