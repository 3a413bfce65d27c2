"""Stage pre_prune: gradient statistics over n_samples examples -> the kept coordinates of θ."""

import logging

from gradiend_core.base_model import open_base, select_param_space
from gradiend_core.data import load_examples
from gradiend_core.gradients import open_computer
from gradiend_core.io import atomic_dir, write_csv, write_json
from gradiend_core.params import load_params
from gradiend_core.pruning import pre_prune
from gradiend_core.runtime import run_stage, seed_everything
from gradiend_core.workspace import EXAMPLES, METRICS, PLOTS, PRE_PRUNE

LOG = logging.getLogger("stages.pre_prune")


def main() -> None:
    params = load_params()
    seed_everything(params.pre_prune.seed)
    base = open_base(params)
    full = select_param_space(base.model, params.gradient)
    LOG.info("gradient vector: %d parameters in %d tensors", full.full_size, len(full.names))
    examples = load_examples(EXAMPLES, params.feature.mask)
    result = pre_prune(
        open_computer(params, base, full), examples, params.feature, params.pre_prune
    )
    with atomic_dir(PRE_PRUNE) as tmp:
        result.space.save(tmp)
    write_csv(PLOTS / "pre_prune" / "kept_per_tensor.csv", result.space.per_tensor_table())
    write_json(METRICS / "pre_prune.json", result.summary())
    LOG.info(
        "kept %d of %d coordinates; written to %s", result.space.size, full.full_size, PRE_PRUNE
    )


if __name__ == "__main__":
    run_stage("pre_prune", main)
