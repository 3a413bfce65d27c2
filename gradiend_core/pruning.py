"""Pre-pruning from gradient statistics (docs/method.md §5.2).

Importance of coordinate i over N sampled examples (stratified between the two classes) is the
absolute value of the *signed* mean gradient of the configured source,

    I_i = | (1/N) Σ_k v_k[i] |

and the top-k coordinates are kept (k = ceil(f·n) for a fraction f, or a count; f is read as the
decimal written in params.yaml, so f = 0.07 of n = 100 keeps 7, not the 8 that binary 0.07·100 =
7.000000000000001 would give). Ties are broken by the lower index (a stable sort), so the selection
is deterministic. The GRADIEND is then built at the pruned size: pruning shrinks the model, not just
its output.

Post-pruning (§5.3) ranks the coordinates of a *trained* GRADIEND by its own weights and zeroes the
rest; the ``select`` stage applies it to the selected GRADIEND when ``post_prune.enabled`` is on.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from gradiend_core.base_model import ParamSpace
from gradiend_core.errors import GradiendError
from gradiend_core.feature import ClassPair
from gradiend_core.runtime import progress

if TYPE_CHECKING:  # annotations only: post-pruning (the select stage) needs neither module
    from gradiend_core.gradiend import Gradiend
    from gradiend_core.gradients import GradientComputer

WEIGHT_SCORES = ("decoder", "encoder", "product")
PASS_ROWS = 16  # pre-pruning examples whose summed gradient one pass computes


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
    """|mean of per-example signed gradients| over the sample; length = computer.size.

    The sum of the per-example vectors is the gradient of the summed per-example losses, so
    ``PASS_ROWS`` examples share one pass (``GradientComputer.summed_vector``) instead of one pass
    each; the sum equals the per-example one up to float rounding."""
    total = torch.zeros(computer.size, dtype=torch.float64, device=computer.base.device)
    for start in progress(range(0, len(sample), PASS_ROWS), desc="pre_prune gradients"):
        chunk = sample.iloc[start : start + PASS_ROWS]
        total += computer.summed_vector(
            chunk["masked"].tolist(),
            chunk["factual"].tolist(),
            chunk["alternative"].tolist(),
            source,
            where="pre_prune example",
        ).double()
    return (total / len(sample)).abs().float()


def topk_count(topk: float | int, n: int, param: str = "pre_prune.topk") -> int:
    """k of the top-k primitive (§5.1): ceil(f·n) for a fraction f (the exact decimal written in
    params.yaml, so 0.07 of 100 is 7), or the count itself; more than n is an error naming
    ``param``."""
    k = math.ceil(Fraction(repr(topk)) * n) if isinstance(topk, float) else int(topk)
    if k > n:
        raise GradiendError(
            f"params.yaml: '{param}' = {topk} keeps more coordinates than the gradient"
            f" vector has ({n}); use a fraction in (0, 1] or a count <= {n}."
        )
    return k


def ranked(scores: torch.Tensor) -> torch.Tensor:
    """All indices, largest score first; equal scores keep the lower index first (stable sort).

    This is the one place the tie rule of §5.1 lives: pre-pruning, post-pruning and the top-k
    export of ``comparison`` all take a prefix of this order.
    """
    return torch.sort(scores.detach().cpu(), descending=True, stable=True).indices


def top_k(scores: torch.Tensor, topk: float | int, param: str = "pre_prune.topk") -> torch.Tensor:
    """Indices (ascending) of the k largest scores; ties keep the lower index.

    The same set as a prefix of ``ranked`` without sorting every score (a 35M-entry sort takes
    ~6 s on 2 cores): every score above the k-th largest value is kept, and of those equal to
    it the lowest indices fill the rest."""
    scores = scores.detach().cpu()
    k = topk_count(topk, scores.numel(), param)
    if k == 0:
        return torch.zeros(0, dtype=torch.int64)
    if torch.isnan(scores).any():  # NaN has no place among values; keep ranked's order
        return ranked(scores)[:k].sort().values
    threshold = torch.topk(scores, k, sorted=False).values.min()
    above = (scores > threshold).nonzero().squeeze(1)
    tied = (scores == threshold).nonzero().squeeze(1)[: k - len(above)]
    return torch.cat([above, tied]).sort().values


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
        feature: ``feature`` params (the sample is stratified over the contrasted pair,
            ``ClassPair.of_feature``; identity rows have no feature direction to rank by).
        settings: ``pre_prune`` params — ``n_samples`` (more: a steadier importance estimate, one
            backward pass each), ``topk`` (fraction or count; smaller: a faster GRADIEND that may
            miss weights the feature uses), ``source`` vector and the sampling ``seed``.
    """
    train = examples[examples["split"] == "train"]
    classes = ClassPair.of_feature(feature).classes
    sample = stratified_sample(train, classes, settings.n_samples, settings.seed)
    scores = importance(computer, sample, settings.source)
    space = computer.space.with_kept(top_k(scores, settings.topk))
    return PrePruneResult(space, scores, len(sample), settings.source)


# ---- post-pruning (§5.3) ----------------------------------------------------------------------


def weight_scores(model: Gradiend, by: str) -> torch.Tensor:
    """Importance of each of the n coordinates from a trained GRADIEND's own weights (§5.3).

        decoder:  s_i = |W_d[i]|          encoder:  s_i = |W_e[:, i]|
        product:  s_i = |W_e[:, i]| · |W_d[i]|

    For d = 1 these are absolute values; for d > 1 |·| is the L2 norm over the latent units.
    ``decoder`` ranks by how much the edit θ + η·dec(f) moves a weight, ``encoder`` by how much the
    weight's gradient moves the encoding; ``product`` keeps coordinates that matter to both (a
    coordinate the encoder ignores but the decoder edits, or the reverse, ranks low). Float64 on
    the CPU: the product of two float32 magnitudes is exact there, so rounding creates no ties.
    """
    if by not in WEIGHT_SCORES:
        raise GradiendError(f"unknown weight score {by!r}; use one of {', '.join(WEIGHT_SCORES)}.")
    with torch.no_grad():
        decoder = model.decoder_weight.detach().double().cpu().norm(dim=1)  # (n,)
        encoder = model.encoder_weight.detach().double().cpu().norm(dim=0)  # (n,)
    score = {"decoder": decoder, "encoder": encoder}.get(by)
    return decoder * encoder if score is None else score


def post_prune(model: Gradiend, topk: float | int, by: str) -> tuple[Gradiend, torch.Tensor]:
    """Keep the top-k coordinates of a trained GRADIEND by ``weight_scores(model, by)``, zero the
    rest; return the pruned copy and the kept positions (ascending).

    At a dropped coordinate i, W_e[:, i], W_d[i] **and** b_d[i] become 0, so that i affects neither
    the encoding h = tanh(W_e s + b_e) nor the edit θ' = θ + η·(W_d f + b_d): the pruned GRADIEND is
    exactly the GRADIEND with coordinate i removed, while keeping the shape (n) and the parameter
    space, so evaluation and rewrite read it unchanged. Zeroing only W_d would leave every dropped
    weight edited by η·b_d, and the encoder still reading it; shrinking n instead would need a new
    parameter space for the same effect. b_e is kept (it is not per coordinate). ``topk`` is a
    fraction (ceil(f·n)) or a count as in §5.1, ties by the lower position. The input is unchanged.
    With ``input_normalization: unit`` the encoder still scales each gradient by its full length:
    the pruned GRADIEND reads the same direction ŝ and ignores the dropped coordinates of it.
    """
    scores = weight_scores(model, by)
    n = scores.numel()
    kept = top_k(scores, topk, "post_prune.topk")
    dropped = torch.ones(n, dtype=torch.bool)
    dropped[kept] = False
    pruned = copy.deepcopy(model)
    dropped = dropped.to(model.decoder_bias.device)
    with torch.no_grad():
        pruned.encoder_weight[:, dropped] = 0.0
        pruned.decoder_weight[dropped, :] = 0.0
        pruned.decoder_bias[dropped] = 0.0
    return pruned, kept
