"""Stage pre_prune@<pair>: gradient statistics over n_samples examples -> the kept coordinates of
θ for one contrasted pair."""

import logging

from gradiend_core.base_model import open_base, select_param_space
from gradiend_core.data import for_pair, load_examples
from gradiend_core.feature import feature_for_pair
from gradiend_core.gradients import open_computer
from gradiend_core.io import atomic_dir, write_csv, write_json
from gradiend_core.params import load_params
from gradiend_core.pruning import pre_prune
from gradiend_core.runtime import run_stage, seed_everything
from gradiend_core.workspace import EXAMPLES, pair_metrics, pair_plots, pre_prune_dir
from stages import stage_args

LOG = logging.getLogger("stages.pre_prune")


def main() -> None:
    pair = stage_args(__doc__).pair
    params = load_params()
    feature = feature_for_pair(params.feature, pair)
    seed_everything(params.pre_prune.seed)
    base = open_base(params)
    full = select_param_space(base.model, params.gradient)
    LOG.info("gradient vector: %d parameters in %d tensors", full.full_size, len(full.names))
    examples = for_pair(load_examples(EXAMPLES, feature.mask), feature, params.data.seed)
    result = pre_prune(open_computer(params, base, full), examples, feature, params.pre_prune)
    with atomic_dir(pre_prune_dir(pair)) as tmp:
        result.space.save(tmp)
    write_csv(
        pair_plots("pre_prune", pair) / "kept_per_tensor.csv", result.space.per_tensor_table()
    )
    write_json(pair_metrics("pre_prune", pair), result.summary())
    LOG.info(
        "%s: kept %d of %d coordinates; written to %s",
        pair,
        result.space.size,
        full.full_size,
        pre_prune_dir(pair),
    )


if __name__ == "__main__":
    run_stage("pre_prune", main)
