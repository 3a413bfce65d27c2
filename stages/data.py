"""Stage data: sources -> data/examples.parquet (masked, split) + data/neutral.parquet."""

import logging

from gradiend_core.data import (
    build_dataset,
    read_neutral_sources,
    read_sources,
    rows_per_class_and_split,
)
from gradiend_core.io import write_json, write_parquet
from gradiend_core.params import load_params
from gradiend_core.runtime import run_stage
from gradiend_core.workspace import EXAMPLES, METRICS, NEUTRAL

LOG = logging.getLogger("stages.data")


def main() -> None:
    params = load_params()
    sources = read_sources(params.data, params.feature)
    corpus = build_dataset(
        sources.documents,
        params.feature,
        params.data,
        prepared=sources.prepared,
        neutral_documents=read_neutral_sources(params.data),
    )
    write_parquet(EXAMPLES, corpus.examples)
    write_parquet(NEUTRAL, corpus.neutral)
    counts = rows_per_class_and_split(corpus.examples)
    write_json(METRICS / "data.json", {**corpus.summary(), "documents": len(sources.documents)})
    LOG.info(
        "wrote %d masked rows %s and %d neutral rows to %s, %s",
        len(corpus.examples),
        counts,
        len(corpus.neutral),
        EXAMPLES,
        NEUTRAL,
    )


if __name__ == "__main__":
    run_stage("data", main)
