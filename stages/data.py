"""Stage data: raw text -> data/examples.parquet (masked, split) + data/neutral.parquet."""

import logging

from gradiend_core.data import build_dataset, read_documents, rows_per_class_and_split
from gradiend_core.io import write_json, write_with
from gradiend_core.params import load_params
from gradiend_core.runtime import run_stage
from gradiend_core.workspace import EXAMPLES, METRICS, NEUTRAL

LOG = logging.getLogger("stages.data")


def main() -> None:
    params = load_params()
    d, f = params.data, params.feature
    documents = [doc for source in d.sources for doc in read_documents(source, d.text_column)]
    corpus = build_dataset(documents, f.classes, f.targets, f.mask, min_words=d.min_words, max_words=d.max_words,
                           min_left_context_words=d.min_left_context_words, max_per_class=d.max_per_class, balance=d.balance,
                           split=d.split, neutral_size=d.neutral_size, neutral_excluded_words=d.neutral_excluded_words, seed=d.seed)
    write_with(EXAMPLES, lambda tmp: corpus.examples.to_parquet(tmp, index=False))
    write_with(NEUTRAL, lambda tmp: corpus.neutral.to_parquet(tmp, index=False))
    counts = rows_per_class_and_split(corpus.examples)
    write_json(METRICS / "data.json", {"rows": counts, "total_rows": len(corpus.examples), "neutral_rows": len(corpus.neutral), "documents": len(documents), "sentences_scanned": corpus.sentences_scanned})
    LOG.info("wrote %d masked rows %s and %d neutral rows to %s, %s", len(corpus.examples), counts, len(corpus.neutral), EXAMPLES, NEUTRAL)


if __name__ == "__main__":
    run_stage("data", main)
