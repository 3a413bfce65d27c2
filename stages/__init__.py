"""One thin script per dvc.yaml stage: read params, call gradiend_core, write the outputs."""

from __future__ import annotations

import argparse

from stages._worker import delegate

delegate()  # `python -m stages.x` runs in the warm worker when one is reachable (stages/_worker.py)


def stage_args(doc: str | None, seed: bool = False) -> argparse.Namespace:
    """``--pair a-b`` (the contrasted pair of a per-pair stage, from ``feature.pairs``) and, for
    training, ``--seed N``; dvc.yaml passes both from its ``foreach``/``matrix``."""
    parser = argparse.ArgumentParser(description=doc)
    parser.add_argument("--pair", required=True, help="a pair of feature.pairs, e.g. he-she")
    if seed:
        parser.add_argument("--seed", type=int, required=True)
    return parser.parse_args()
