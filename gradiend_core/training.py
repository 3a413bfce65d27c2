"""Training one GRADIEND: batching, evaluation during training, sign flips, convergence (§4).

One step = ``gradiend_batch_size`` stacked base-gradient vectors, each the mean over ``batch_size``
examples of a single transition; transitions alternate round-robin and each class's rows are
reshuffled whenever they run out (docs/method.md §4.2). The base model is frozen, so the validation
rows' source gradients never change: they are computed once and every evaluation is a single
matrix product (§4.3).

Evaluation (step 0, every ``eval_steps``, last step): Pearson correlation between enc(g_source) and
the label. Below ``FLIP_THRESHOLD`` the GRADIEND is flipped exactly (``Gradiend.flip_sign``) so that
class A encodes towards +1 (§4.4). The best checkpoint is the evaluation after step 0 with the
largest |correlation|, ties keeping the earlier one (§4.5); convergence is judged on it (§4.6).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from gradiend_core.errors import GradiendError
from gradiend_core.feature import ClassPair
from gradiend_core.gradiend import Gradiend
from gradiend_core.gradients import GradientComputer, needed_kinds
from gradiend_core.runtime import progress
from gradiend_core.stats import pearson

LOG = logging.getLogger(__name__)

# A validation correlation below this flips the GRADIEND's sign (§4.4). Between it and 0 the run is
# left alone: a weakly negative correlation early in training is usually noise, not a mirrored
# solution.
FLIP_THRESHOLD = -0.6

# AdamW's epsilon for the GRADIEND's parameters.
ADAM_EPS = 1e-8


def round_robin_batches(
    rows: pd.DataFrame, classes: list[str], batch_size: int, seed: int
) -> Iterator[pd.DataFrame]:
    """Endless batches alternating between the classes' transitions (§4.2).

    Each batch holds ``batch_size`` rows of one factual class; a class's rows are reshuffled with
    the seeded generator whenever they are exhausted (a trailing partial batch is dropped).
    """
    rng = np.random.default_rng(seed)
    pools = []
    for cls in classes:
        pool = rows[rows["factual_class"] == cls].reset_index(drop=True)
        if len(pool) < batch_size:
            raise GradiendError(
                f"class {cls!r} has {len(pool)} training rows, fewer than train.batch_size = "
                f"{batch_size}; lower train.batch_size or add data."
            )
        pools.append(pool)
    cursors: list[Iterator[pd.DataFrame]] = [iter(()) for _ in pools]
    while True:
        for i, pool in enumerate(pools):
            batch = next(cursors[i], None)
            if batch is None:
                order = rng.permutation(len(pool))
                starts = range(0, len(pool) - batch_size + 1, batch_size)
                cursors[i] = iter([pool.iloc[order[s : s + batch_size]] for s in starts])
                batch = next(cursors[i])
            yield batch


@dataclass(frozen=True)
class Evaluation:
    """One validation measurement during training."""

    step: int
    correlation: float
    mean_by_class: dict[str, float]
    """Mean encoding per *source* class (the class of the fed gradient)."""
    flipped: bool
    encoder_norm: float
    decoder_norm: float

    def row(self) -> dict:
        """A flat record for ``eval.csv`` and ``training.json``."""
        means = {f"mean_{k}": v for k, v in self.mean_by_class.items()}
        return {
            "step": self.step,
            "correlation": self.correlation,
            **means,
            "flipped": self.flipped,
            "encoder_norm": self.encoder_norm,
            "decoder_norm": self.decoder_norm,
        }


class EvalSet:
    """Validation source gradients, computed once; an evaluation is then one matrix product."""

    def __init__(
        self, computer: GradientComputer, rows: pd.DataFrame, pair: ClassPair, source: str
    ):
        rows_iter = progress(
            rows.itertuples(index=False), total=len(rows), desc="validation gradients"
        )
        vectors = [
            computer.vectors(
                [r.masked], [r.factual], [r.alternative], (source,), where=f"validation example {i}"
            )[source]
            for i, r in enumerate(rows_iter)
        ]
        self.matrix = torch.stack(vectors)  # (N, n)
        labels = [pair.label(c, source) for c in rows["factual_class"]]
        self.labels = torch.tensor(labels, dtype=torch.float32)  # (N,)
        self.groups = [pair.source_class(c, source) for c in rows["factual_class"]]
        self.classes = pair.classes

    @torch.no_grad()
    def evaluate(self, model: Gradiend, step: int, normalize: bool, optimizer=None) -> Evaluation:
        """Correlation and class means of the encodings; flips ``model`` (and the optimizer's
        first moments) when ``normalize`` and the correlation is below ``FLIP_THRESHOLD``."""
        enc = model.encode(self.matrix)[:, 0].cpu()  # (N,)
        corr = pearson(enc, self.labels)
        flipped = normalize and model.latent_dim == 1 and corr < FLIP_THRESHOLD
        if flipped:
            model.flip_sign(optimizer)
            enc, corr = -enc, -corr
        means = {c: float(enc[[g == c for g in self.groups]].mean()) for c in self.classes}
        return Evaluation(step, corr, means, flipped, **model.norms())


def converged(best: Evaluation | None, threshold: float, mean_threshold: float) -> bool:
    """§4.6: best step > 0, correlation >= ``threshold``, every class |mean| >= ``mean_threshold``,
    and the two class means of opposite signs."""
    if best is None or best.step <= 0:
        return False
    means = list(best.mean_by_class.values())
    strong = min(abs(m) for m in means) >= mean_threshold
    return best.correlation >= threshold and strong and means[0] * means[1] < 0


@dataclass
class TrainResult:
    """The best checkpoint's weights (already loaded into ``model``) and the run's record."""

    model: Gradiend
    best: Evaluation | None
    evaluations: list[Evaluation]
    losses: list[float]
    converged: bool

    def report(self, seed: int, input_dim: int) -> dict:
        """Headline scalars of the run: ``metrics/train/seed_<s>.json``."""
        best = self.best
        return {
            "seed": seed,
            "input_dim": input_dim,
            "steps": len(self.losses),
            "converged": self.converged,
            "best_step": best.step if best else None,
            "best_correlation": best.correlation if best else None,
            "mean_by_class": best.mean_by_class if best else None,
            "final_loss": self.losses[-1],
            "sign_flips": sum(e.flipped for e in self.evaluations),
        }


def train_gradiend(
    computer: GradientComputer,
    train_rows: pd.DataFrame,
    eval_rows: pd.DataFrame,
    pair: ClassPair,
    settings,
    seed: int,
) -> TrainResult:
    """Train one GRADIEND on base-model gradients (docs/method.md §4).

    Args:
        computer: produces the flat gradient vectors over θ's kept coordinates; its ``size`` is the
            GRADIEND's input dimension n.
        train_rows: masked training rows; batches come from ``round_robin_batches``.
        eval_rows: validation rows, encoded at step 0, every ``eval_steps`` and at the last step.
        pair: the contrasted classes (labels and groups of the evaluation).
        settings: the ``train`` params — ``source``/``target`` vectors, AdamW ``learning_rate`` and
            ``weight_decay``, ``batch_size`` examples per base gradient (larger: smoother vectors,
            fewer distinct training signals), ``gradiend_batch_size`` vectors per step (larger:
            one base pass more per step), ``max_steps``, ``eval_steps`` (smaller: a finer choice of
            the best checkpoint), ``normalize_sign`` and the convergence thresholds.
        seed: initialisation and batch order.
    """
    source, target = settings.source, settings.target
    kinds = needed_kinds(source, target)
    eval_set = EvalSet(computer, eval_rows, pair, source)
    model = Gradiend.initialised(computer.size, seed).to(computer.base.device)
    optimizer = torch.optim.AdamW(
        model.parameters(),
        lr=settings.learning_rate,
        weight_decay=settings.weight_decay,
        eps=ADAM_EPS,
        foreach=True,
    )
    batches = round_robin_batches(train_rows, pair.classes, settings.batch_size, seed)
    normalize = settings.normalize_sign
    evaluations = [eval_set.evaluate(model, 0, normalize, optimizer)]
    best: Evaluation | None = None
    best_state: dict | None = None
    losses: list[float] = []
    max_steps, eval_steps = settings.max_steps, settings.eval_steps
    bar = progress(range(1, max_steps + 1), desc=f"train seed {seed}")
    for step in bar:
        sources, targets = [], []
        for _ in range(settings.gradiend_batch_size):
            batch = next(batches)
            where = f"train step {step} (batch starting {batch['masked'].iloc[0][:40]!r})"
            vec = computer.vectors(
                batch["masked"].tolist(),
                batch["factual"].tolist(),
                batch["alternative"].tolist(),
                kinds,
                where=where,
            )
            sources.append(vec[source])
            targets.append(vec[target])
        loss = model.closed_form_grads(torch.stack(sources), torch.stack(targets))
        if not np.isfinite(loss):
            raise GradiendError(
                f"train step {step}: the GRADIEND loss is {loss}; lower train.learning_rate."
            )
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss)
        if step % eval_steps == 0 or step == max_steps:
            ev = eval_set.evaluate(model, step, normalize, optimizer)
            evaluations.append(ev)
            bar.set_postfix(corr=f"{ev.correlation:+.3f}", loss=f"{loss:.3g}")
            if best is None or abs(ev.correlation) > abs(best.correlation):
                best = ev
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if best_state is not None:
        model.load_state_dict(best_state)
    is_converged = converged(
        best, settings.convergence_threshold, settings.convergence_mean_threshold
    )
    return TrainResult(model, best, evaluations, losses, is_converged)
