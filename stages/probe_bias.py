"""Stage probe_bias@<pair>: next-token P(class) after occupation prompts, base vs rewritten, against
published gender-stereotype labels."""

import logging

from gradiend_core.base_model import load_base_model
from gradiend_core.feature import ClassPair, feature_for_pair
from gradiend_core.io import read_json, write_csv, write_json
from gradiend_core.params import load_params
from gradiend_core.plots import bias_scatter
from gradiend_core.probes import bias_probe
from gradiend_core.runtime import run_stage
from gradiend_core.workspace import pair_metrics, pair_plots, probe_base_file, rewritten_dir
from stages import stage_args

LOG = logging.getLogger("stages.probe_bias")


def main() -> None:
    name = stage_args(__doc__).pair
    params = load_params()
    settings, runtime = params.probe_bias, params.runtime
    feature = feature_for_pair(params.feature, name)
    reference = read_json(probe_base_file(name), "the base model's probe results")
    rewritten = load_base_model(
        rewritten_dir(name), runtime.device, runtime.dtype, runtime.device_map
    )
    probe = bias_probe(
        None, rewritten, feature, settings, params.gradient.max_length, reference["bias"]
    )
    out = pair_plots("probe_bias", name)
    write_json(pair_metrics("probe_bias", name), probe.metrics)
    write_csv(out / "occupations.csv", probe.table)
    bias_scatter(
        probe.table, probe.metrics, ClassPair.of_feature(feature).classes, out / "scatter.png"
    )
    LOG.info("%s", probe.summary())


if __name__ == "__main__":
    run_stage("probe_bias", main)
