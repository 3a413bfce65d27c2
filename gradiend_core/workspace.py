"""Where the pipeline's artifacts live, and the loaders stages share.

The paths here are the ones ``dvc.yaml`` declares; ``tests/test_dvc_pipeline.py`` checks that each
stage reads only its declared deps and params and writes exactly its declared outputs.
"""

from __future__ import annotations

from pathlib import Path

from gradiend_core.gradients import GradientComputer
from gradiend_core.mlm_head import MlmHead
from gradiend_core.modeling import BaseModel, ParamSpace, load_base_model
from gradiend_core.params import Params
from gradiend_core.runtime import configure_torch

BASE_MODEL = Path("models/base")
EXAMPLES = Path("data/examples.parquet")
NEUTRAL = Path("data/neutral.parquet")
MLM_HEAD = Path("models/mlm_head")
PRE_PRUNE = Path("models/pre_prune")
GRADIENDS = Path("models/gradiend")
SELECTED = Path("models/selected")
REWRITTEN = Path("models/rewritten")
METRICS = Path("metrics")
PLOTS = Path("plots")


def gradiend_dir(seed: int) -> Path:
    return GRADIENDS / f"seed_{seed}"


def train_metrics(seed: int) -> Path:
    return METRICS / "train" / f"seed_{seed}.json"


def open_base(params: Params) -> BaseModel:
    rt = params.runtime
    configure_torch(rt.num_threads, rt.device)
    return load_base_model(BASE_MODEL, rt.device, rt.dtype, rt.device_map)


def open_computer(params: Params, base: BaseModel, space: ParamSpace) -> GradientComputer:
    """The gradient computer for the configured objective (the MLM head is loaded when it is used)."""
    g = params.gradient
    head = MlmHead.load(MLM_HEAD) if g.objective == "clm_mlm_head" else None
    return GradientComputer(base, space, g.objective, params.feature.mask, g.max_length, head)
