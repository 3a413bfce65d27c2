"""Stage probe_generation@<pair>: continuations of neutral occupation prompts from the base and the
rewritten model, and how often they mention each class."""

import logging

from gradiend_core.base_model import load_base_model
from gradiend_core.feature import feature_for_pair
from gradiend_core.io import read_json, write_csv, write_json, write_text
from gradiend_core.params import load_params
from gradiend_core.plots import generation_rates
from gradiend_core.probes import generation_probe
from gradiend_core.runtime import run_stage
from gradiend_core.workspace import pair_metrics, pair_plots, probe_base_file, rewritten_dir
from stages import stage_args

LOG = logging.getLogger("stages.probe_generation")


def main() -> None:
    name = stage_args(__doc__).pair
    params = load_params()
    settings, runtime = params.probe_generation, params.runtime
    feature = feature_for_pair(params.feature, name)
    reference = read_json(probe_base_file(name), "the base model's probe results")
    rewritten = load_base_model(
        rewritten_dir(name), runtime.device, runtime.dtype, runtime.device_map
    )
    probe = generation_probe(None, rewritten, feature, settings, reference["generation"])
    out = pair_plots("probe_generation", name)
    write_json(pair_metrics("probe_generation", name), probe.metrics)
    write_csv(out / "continuations.csv", probe.table)
    write_text(out / "samples.md", probe.markdown)
    generation_rates(probe.metrics, feature.classes, out / "rates.png")
    LOG.info("%s", probe.summary())


if __name__ == "__main__":
    run_stage("probe_generation", main)
