"""Stage base_model: put the base LM into models/base as safetensors + tokenizer."""

import logging

from gradiend_core.base_model import acquire_base_model
from gradiend_core.params import load_params
from gradiend_core.runtime import configure_torch, run_stage
from gradiend_core.workspace import BASE_MODEL

LOG = logging.getLogger("stages.base_model")


def main() -> None:
    params = load_params()
    configure_torch(params.runtime.num_threads)
    record = acquire_base_model(params.model.source, BASE_MODEL)
    LOG.info(
        "base model %s (%s, %d parameters) written to %s",
        record["source"],
        record["architecture"],
        record["num_parameters"],
        BASE_MODEL,
    )


if __name__ == "__main__":
    run_stage("base_model", main)
