"""Stage probe_generation: continuations of neutral occupation prompts from the base and the
rewritten model, and how often they mention each class."""

import logging

from gradiend_core.base_model import load_base_model, open_base
from gradiend_core.io import write_csv, write_json, write_text
from gradiend_core.params import load_params
from gradiend_core.plots import generation_rates
from gradiend_core.probes import generation_probe
from gradiend_core.runtime import run_stage
from gradiend_core.workspace import METRICS, PLOTS, REWRITTEN

LOG = logging.getLogger("stages.probe_generation")


def main() -> None:
    params = load_params()
    settings, feature, runtime = params.probe_generation, params.feature, params.runtime
    base = open_base(params)
    rewritten = load_base_model(REWRITTEN, runtime.device, runtime.dtype, runtime.device_map)
    probe = generation_probe(base, rewritten, feature, settings)
    out = PLOTS / "probe_generation"
    write_json(METRICS / "probe_generation.json", probe.metrics)
    write_csv(out / "continuations.csv", probe.table)
    write_text(out / "samples.md", probe.markdown)
    generation_rates(probe.metrics, feature.classes, out / "rates.png")
    LOG.info("%s", probe.summary())


if __name__ == "__main__":
    run_stage("probe_generation", main)
