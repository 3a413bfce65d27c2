"""Pre-pruning from gradient statistics (docs/method.md §5.2).

Importance of coordinate i over N sampled examples (stratified between the two classes) is the
absolute value of the *signed* mean gradient of the configured source,

    I_i = | (1/N) Σ_k v_k[i] |

and the top-k coordinates are kept (k = ceil(f·n) for a fraction f, or a count; f is read as the
decimal written in params.yaml, so f = 0.07 of n = 100 keeps 7, not the 8 that binary 0.07·100 =
7.000000000000001 would give). Ties are broken by the lower index (a stable sort), so the selection
is deterministic. The GRADIEND is then built at the pruned size: pruning shrinks the model, not just
its output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import pandas as pd
import torch

from gradiend_core.base_model import ParamSpace
from gradiend_core.errors import GradiendError
from gradiend_core.gradients import GradientComputer
from gradiend_core.runtime import progress


def stratified_sample(
    rows: pd.DataFrame, classes: list[str], n_samples: int, seed: int
) -> pd.DataFrame:
    """n_samples//2 rows per class (remainder to the first class), without replacement where
    possible."""
    rng = np.random.default_rng(seed)
    parts = []
    for i, cls in enumerate(classes):
        want = n_samples // 2 + (n_samples % 2 if i == 0 else 0)
        pool = rows[rows["factual_class"] == cls]
        if pool.empty:
            raise GradiendError(
                f"data/examples.parquet: class {cls!r} has no training row; regenerate the data"
                " (dvc repro data)."
            )
        idx = rng.choice(len(pool), size=want, replace=want > len(pool))
        parts.append(pool.iloc[np.sort(idx)])
    return pd.concat(parts, ignore_index=True)


def importance(computer: GradientComputer, sample: pd.DataFrame, source: str) -> torch.Tensor:
    """|mean of per-example signed gradients| over the sample; length = computer.size."""
    total = torch.zeros(computer.size, dtype=torch.float64, device=computer.base.device)
    for i, row in enumerate(
        progress(sample.itertuples(index=False), total=len(sample), desc="pre_prune gradients")
    ):
        vec = computer.vectors(
            [row.masked],
            [row.factual],
            [row.alternative],
            (source,),
            where=f"pre_prune example {i}",
        )[source]
        total += vec.double()
    return (total / len(sample)).abs().float()


def top_k(scores: torch.Tensor, topk: float | int) -> torch.Tensor:
    """Indices (ascending) of the k largest scores; ties keep the lower index."""
    n = scores.numel()
    k = (
        math.ceil(Fraction(repr(topk)) * n) if isinstance(topk, float) else int(topk)
    )  # exact decimal f, no float round-up
    if k > n:
        raise GradiendError(
            f"params.yaml: 'pre_prune.topk' = {topk} keeps more coordinates than the gradient"
            f" vector has ({n}); use a fraction in (0, 1] or a count <= {n}."
        )
    order = torch.sort(scores.cpu(), descending=True, stable=True).indices
    return order[:k].sort().values


@dataclass(frozen=True)
class PrePruneResult:
    """The pruned parameter space and the importance scores it was chosen by."""

    space: ParamSpace
    scores: torch.Tensor  # (full n,) importance of every coordinate of θ
    n_samples: int
    source: str

    def summary(self) -> dict:
        """Headline scalars for ``metrics/pre_prune.json`` (per-tensor counts go to a table)."""
        kept = self.scores[self.space.kept] if self.space.kept is not None else self.scores
        return {
            "n_before": self.space.full_size,
            "n_after": self.space.size,
            "kept_fraction": self.space.size / self.space.full_size,
            "n_samples": self.n_samples,
            "source": self.source,
            "kept_per_layer": self.space.kept_per_layer(),
            "importance_kept_min": float(kept.min()),
            "importance_max": float(self.scores.max()),
        }


def pre_prune(
    computer: GradientComputer, examples: pd.DataFrame, feature, settings
) -> PrePruneResult:
    """Keep the top-k coordinates of θ by gradient importance (§5.2).

    Args:
        computer: gradient computer over the *full* θ.
        examples: masked rows; only the train split is sampled.
        feature: ``feature`` params (the classes the sample is stratified over).
        settings: ``pre_prune`` params — ``n_samples`` (more: a steadier importance estimate, one
            backward pass each), ``topk`` (fraction or count; smaller: a faster GRADIEND that may
            miss weights the feature uses), ``source`` vector and the sampling ``seed``.
    """
    train = examples[examples["split"] == "train"]
    sample = stratified_sample(train, feature.classes, settings.n_samples, settings.seed)
    scores = importance(computer, sample, settings.source)
    space = computer.space.with_kept(top_k(scores, settings.topk))
    return PrePruneResult(space, scores, len(sample), settings.source)
