"""Stage probe_base@<pair>: the base model's side of both behavioural probes (its continuations of
the generation probe's prompts, its P(A), P(B) after the bias probe's), made once per base model
and probe params and read by probe_generation and probe_bias for every rewrite."""

import logging

from gradiend_core.base_model import open_base
from gradiend_core.feature import feature_for_pair
from gradiend_core.io import write_json
from gradiend_core.params import load_params
from gradiend_core.probes import base_reference
from gradiend_core.runtime import run_stage
from gradiend_core.workspace import probe_base_file
from stages import stage_args

LOG = logging.getLogger("stages.probe_base")


def main() -> None:
    name = stage_args(__doc__).pair
    params = load_params()
    feature = feature_for_pair(params.feature, name)
    base = open_base(params)
    reference = base_reference(
        base, feature, params.probe_generation, params.probe_bias, params.gradient.max_length
    )
    write_json(probe_base_file(name), reference)
    done = [k for k, v in reference.items() if v is not None]
    LOG.info("base side of %s -> %s", ", ".join(done) or "no probe", probe_base_file(name))


if __name__ == "__main__":
    run_stage("probe_base", main)
