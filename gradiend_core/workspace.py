"""Where the pipeline's artifacts live (paths only: importing this module costs nothing).

The paths here are the ones ``dvc.yaml`` declares; ``tests/test_dvc_pipeline.py`` checks that each
stage reads only its declared deps and params and writes exactly its declared outputs.
"""

from __future__ import annotations

from pathlib import Path

BASE_MODEL = Path("models/base")
EXAMPLES = Path("data/examples.parquet")
NEUTRAL = Path("data/neutral.parquet")
MLM_HEAD = Path("models/mlm_head")
PRE_PRUNE = Path("models/pre_prune")
GRADIENT_STORE = Path("models/gradients")
GRADIENDS = Path("models/gradiend")
SELECTED = Path("models/selected")
REWRITTEN = Path("models/rewritten")
METRICS = Path("metrics")
PLOTS = Path("plots")


def gradiend_dir(seed: int) -> Path:
    return GRADIENDS / f"seed_{seed}"


def train_metrics(seed: int) -> Path:
    return METRICS / "train" / f"seed_{seed}.json"
