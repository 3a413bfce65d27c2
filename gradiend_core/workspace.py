"""Where the pipeline's artifacts live (paths only: importing this module costs nothing).

The paths here are the ones ``dvc.yaml`` declares; ``tests/test_dvc_pipeline.py`` checks that each
stage reads only its declared deps and params and writes exactly its declared outputs.

Stages shared by the whole feature (base_model, data, lower_states, mlm_head) write one artifact
each. Stages that belong to one contrasted pair (``feature.pairs``, e.g. ``he-she``) write under
the pair's name inside their stage's folder — ``models/pre_prune/he-she``,
``metrics/evaluate_decoder/he-she.json`` — and the suite-wide stages (select, evaluate_encoder,
compare) write one file over every pair.
"""

from __future__ import annotations

from pathlib import Path

BASE_MODEL = Path("models/base")
EXAMPLES = Path("data/examples.parquet")
NEUTRAL = Path("data/neutral.parquet")
MLM_HEAD = Path("models/mlm_head")
LOWER_STATES = Path("models/lower_states.safetensors")
PRE_PRUNE = Path("models/pre_prune")
GRADIENT_STORE = Path("models/gradients")
GRADIENDS = Path("models/gradiend")
SELECTED = Path("models/selected")
REWRITTEN = Path("models/rewritten")
PROBE_BASE = Path("models/probe_base")
DECODER_BASE = Path("models/decoder_base")
METRICS = Path("metrics")
PLOTS = Path("plots")


def pre_prune_dir(pair: str) -> Path:
    return PRE_PRUNE / pair


def gradient_store(pair: str) -> Path:
    return GRADIENT_STORE / pair


def gradiend_dir(pair: str, seed: int) -> Path:
    return GRADIENDS / pair / f"seed_{seed}"


def train_metrics(pair: str, seed: int) -> Path:
    return METRICS / "train" / pair / f"seed_{seed}.json"


def selected_dir(pair: str) -> Path:
    return SELECTED / pair


def rewritten_dir(pair: str) -> Path:
    return REWRITTEN / pair


def probe_base_file(pair: str) -> Path:
    """The base model's side of the pair's behavioural probes (stage probe_base@<pair>)."""
    return PROBE_BASE / f"{pair}.json"


def decoder_base_file(pair: str) -> Path:
    """The base model's side of the pair's decoder grid (stage decoder_base@<pair>)."""
    return DECODER_BASE / f"{pair}.safetensors"


def pair_metrics(stage: str, pair: str) -> Path:
    """``metrics/<stage>/<pair>.json`` of a per-pair stage."""
    return METRICS / stage / f"{pair}.json"


def pair_plots(stage: str, pair: str) -> Path:
    """``plots/<stage>/<pair>/``: the per-pair stage's plot folder."""
    return PLOTS / stage / pair
