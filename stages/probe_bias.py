"""Stage probe_bias: next-token P(class) after occupation prompts, base vs rewritten, against
published gender-stereotype labels."""

import logging

from gradiend_core.base_model import load_base_model, open_base
from gradiend_core.feature import ClassPair
from gradiend_core.io import write_csv, write_json
from gradiend_core.params import load_params
from gradiend_core.plots import bias_scatter
from gradiend_core.probes import bias_probe
from gradiend_core.runtime import run_stage
from gradiend_core.workspace import METRICS, PLOTS, REWRITTEN

LOG = logging.getLogger("stages.probe_bias")


def main() -> None:
    params = load_params()
    settings, feature, runtime = params.probe_bias, params.feature, params.runtime
    base = open_base(params)
    rewritten = load_base_model(REWRITTEN, runtime.device, runtime.dtype, runtime.device_map)
    probe = bias_probe(base, rewritten, feature, settings, params.gradient.max_length)
    out = PLOTS / "probe_bias"
    write_json(METRICS / "probe_bias.json", probe.metrics)
    write_csv(out / "occupations.csv", probe.table)
    bias_scatter(
        probe.table, probe.metrics, ClassPair.of_feature(feature).classes, out / "scatter.png"
    )
    LOG.info("%s", probe.summary())


if __name__ == "__main__":
    run_stage("probe_bias", main)
