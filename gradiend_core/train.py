"""GRADIEND training loop, evaluation in training, convergence, and seed selection (spec §4).

One step = one (or ``gradiend_batch_size`` stacked) base-gradient vector(s), each the mean over
``batch_size`` examples of a single transition; transitions alternate round-robin and each class's
rows are reshuffled whenever they run out. The base model is frozen, so the validation rows' source
gradients never change: they are computed once and every evaluation is a single matrix product.

Evaluation (step 0, every ``eval_steps``, last step): Pearson correlation between enc(g_source) and
the label (+1 class A, -1 class B, negated for source 'alternative'). If it is below -0.6 the
GRADIEND is flipped exactly (``Gradiend.flip_sign``) so class A encodes towards +1. The best
checkpoint is the evaluation after step 0 with the largest |correlation| (ties keep the earlier one).
Converged iff best step > 0, correlation >= threshold, every class |mean| >= mean threshold, and the
two class means have opposite signs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from gradiend_core.errors import GradiendError
from gradiend_core.gradients import GradientComputer, encoder_label, needed_kinds
from gradiend_core.model import Gradiend
from gradiend_core.runtime import progress

LOG = logging.getLogger(__name__)
FLIP_THRESHOLD = -0.6


def pearson(x: torch.Tensor, y: torch.Tensor) -> float:
    """Pearson correlation; 0.0 when either side has zero variance or fewer than two values."""
    x, y = x.double().flatten(), y.double().flatten()
    if x.numel() < 2:
        return 0.0
    xc, yc = x - x.mean(), y - y.mean()
    denom = xc.norm() * yc.norm()
    return 0.0 if denom == 0 else float((xc @ yc) / denom)


def round_robin_batches(rows: pd.DataFrame, classes: list[str], batch_size: int, seed: int) -> Iterator[pd.DataFrame]:
    """Endless batches alternating between the classes' transitions; a class reshuffles when exhausted."""
    rng = np.random.default_rng(seed)
    pools = []
    for cls in classes:
        pool = rows[rows["factual_class"] == cls].reset_index(drop=True)
        if len(pool) < batch_size:
            raise GradiendError(f"class {cls!r} has {len(pool)} training rows, fewer than train.batch_size = {batch_size}; lower train.batch_size or add data.")
        pools.append(pool)
    cursors = [iter(()) for _ in pools]
    while True:
        for i, pool in enumerate(pools):
            batch = next(cursors[i], None)
            if batch is None:
                order = rng.permutation(len(pool))
                cursors[i] = iter([pool.iloc[order[s : s + batch_size]] for s in range(0, len(pool) - batch_size + 1, batch_size)])
                batch = next(cursors[i])
            yield batch


@dataclass(frozen=True)
class Evaluation:
    step: int
    correlation: float
    mean_by_class: dict[str, float]  # keyed by the class whose gradient was fed (source class)
    flipped: bool
    encoder_norm: float
    decoder_norm: float

    def row(self) -> dict:
        return {"step": self.step, "correlation": self.correlation, **{f"mean_{k}": v for k, v in self.mean_by_class.items()}, "flipped": self.flipped, "encoder_norm": self.encoder_norm, "decoder_norm": self.decoder_norm}


def source_class(factual_class: str, classes: list[str], source: str) -> str:
    """The class of the token whose gradient the encoder sees."""
    if source != "alternative":
        return factual_class
    return classes[1] if factual_class == classes[0] else classes[0]


class EvalSet:
    """Validation source gradients, computed once; evaluation is a matrix product."""

    def __init__(self, computer: GradientComputer, rows: pd.DataFrame, classes: list[str], source: str):
        vectors = [computer.vectors([r.masked], [r.factual], [r.alternative], (source,), where=f"validation example {i}")[source]
                   for i, r in enumerate(progress(rows.itertuples(index=False), total=len(rows), desc="validation gradients"))]
        self.matrix = torch.stack(vectors)  # (N, n)
        self.labels = torch.tensor([encoder_label(c, classes, source) for c in rows["factual_class"]], dtype=torch.float32)
        self.groups = [source_class(c, classes, source) for c in rows["factual_class"]]
        self.classes = classes

    @torch.no_grad()
    def evaluate(self, model: Gradiend, step: int, normalize: bool, optimizer=None) -> Evaluation:
        enc = model.encode(self.matrix)[:, 0].cpu()
        corr = pearson(enc, self.labels)
        flipped = normalize and model.latent_dim == 1 and corr < FLIP_THRESHOLD
        if flipped:
            model.flip_sign(optimizer)
            enc, corr = -enc, -corr
        means = {c: float(enc[[g == c for g in self.groups]].mean()) for c in self.classes}
        return Evaluation(step, corr, means, flipped, **model.norms())


def converged(best: Evaluation | None, threshold: float, mean_threshold: float) -> bool:
    if best is None or best.step <= 0:
        return False
    means = list(best.mean_by_class.values())
    return best.correlation >= threshold and min(abs(m) for m in means) >= mean_threshold and means[0] * means[1] < 0


@dataclass
class TrainResult:
    model: Gradiend
    best: Evaluation | None
    evaluations: list[Evaluation]
    losses: list[float]
    converged: bool


def train_gradiend(computer: GradientComputer, train_rows: pd.DataFrame, eval_rows: pd.DataFrame, classes: list[str], *, source: str, target: str,
                   learning_rate: float, weight_decay: float, batch_size: int, gradiend_batch_size: int, max_steps: int, eval_steps: int,
                   normalize_sign: bool, convergence_threshold: float, convergence_mean_threshold: float, seed: int) -> TrainResult:
    kinds = needed_kinds(source, target)
    eval_set = EvalSet(computer, eval_rows, classes, source)
    model = Gradiend.initialised(computer.size, seed).to(computer.base.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay, eps=1e-8, foreach=True)
    batches = round_robin_batches(train_rows, classes, batch_size, seed)
    evaluations = [eval_set.evaluate(model, 0, normalize_sign, optimizer)]
    best: Evaluation | None = None
    best_state: dict | None = None
    losses: list[float] = []
    bar = progress(range(1, max_steps + 1), desc=f"train seed {seed}")
    for step in bar:
        sources, targets = [], []
        for _ in range(gradiend_batch_size):
            batch = next(batches)
            vec = computer.vectors(batch["masked"].tolist(), batch["factual"].tolist(), batch["alternative"].tolist(), kinds, where=f"train step {step} (batch starting {batch['masked'].iloc[0][:40]!r})")
            sources.append(vec[source])
            targets.append(vec[target])
        loss = model.closed_form_grads(torch.stack(sources), torch.stack(targets))
        if not np.isfinite(loss):
            raise GradiendError(f"train step {step}: the GRADIEND loss is {loss}; lower train.learning_rate.")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss)
        if step % eval_steps == 0 or step == max_steps:
            ev = eval_set.evaluate(model, step, normalize_sign, optimizer)
            evaluations.append(ev)
            bar.set_postfix(corr=f"{ev.correlation:+.3f}", loss=f"{loss:.3g}")
            if best is None or abs(ev.correlation) > abs(best.correlation):
                best = ev
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if best_state is not None:
        model.load_state_dict(best_state)
    return TrainResult(model, best, evaluations, losses, converged(best, convergence_threshold, convergence_mean_threshold))


def select_seed(reports: list[dict]) -> dict:
    """Best converged seed by validation correlation (ties: lower seed); else the best non-converged one."""
    pool = [r for r in reports if r["converged"]] or reports
    best = max(pool, key=lambda r: (r["best_correlation"] if r["best_correlation"] is not None else -np.inf, -r["seed"]))
    return best
