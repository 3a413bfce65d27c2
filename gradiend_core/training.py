"""Training one GRADIEND: batches, evaluation during training, sign flips, convergence (§4).

The base-model gradient vectors come from the ``gradients`` stage (``gradiend_core.vectors``): the
training rows are cut once into fixed batches whose source and target vectors are stored, and a
seed draws the order of the batches — round-robin over the transitions A→B, B→A and any identity
classes (§1.3), each transition's batches reshuffled whenever they run out (docs/method.md §4.2).
A step takes ``gradiend_batch_size`` batch vectors and one closed-form AdamW step
(``Gradiend.fused_update``); no base-model pass happens here.

Evaluation (step 0, every ``eval_steps``, last step): Pearson correlation between enc(g_source) and
the label on the stored validation vectors (§4.3). Below ``FLIP_THRESHOLD`` the GRADIEND is flipped
exactly (``Gradiend.flip_sign``) so that class A encodes towards +1 (§4.4). The best checkpoint is
the evaluation with the largest |correlation|, ties keeping the earlier one (§4.5); step 0
competes too, and a run whose best is step 0 never improved on its initialization, so it never
counts as converged (§4.6).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from gradiend_core.errors import GradiendError
from gradiend_core.feature import ClassPair
from gradiend_core.gradiend import Gradiend, GradiendAdamW
from gradiend_core.runtime import progress
from gradiend_core.stats import pearson
from gradiend_core.vectors import GradientStore, RowVectors

LOG = logging.getLogger(__name__)

# A validation correlation below this flips the GRADIEND's sign (§4.4). Between it and 0 the run is
# left alone: a weakly negative correlation early in training is usually noise, not a mirrored
# solution.
FLIP_THRESHOLD = -0.6

# AdamW's epsilon for the GRADIEND's parameters.
ADAM_EPS = 1e-8


def batch_schedule(batch_classes: list[str], pair: ClassPair, count: int, seed: int) -> list[int]:
    """``count`` batch positions, round-robin over the transitions (§4.2): A→B, B→A, then each
    identity class present in ``batch_classes`` (§1.3, in stored order), and again.

    Each transition's batches come in a seeded random order, reshuffled whenever they run out.
    One identity transition per class, not one for all of them, gives every class outside the
    pair as many steps as each direction of the pair: with k identity classes a share k/(k + 2)
    of the steps teaches the GRADIEND to leave unrelated classes at 0, at the cost of fewer
    pair steps per ``train.max_steps``.
    """
    generator = torch.Generator().manual_seed(seed)
    transitions = [*pair.classes, *dict.fromkeys(c for c in batch_classes if c not in pair)]
    pools = {c: [i for i, b in enumerate(batch_classes) if b == c] for c in transitions}
    for cls, pool in pools.items():
        if not pool:
            raise GradiendError(
                f"class {cls!r} has no training batch; lower train.batch_size or add data."
            )
    queues: dict[str, list[int]] = {c: [] for c in transitions}
    out: list[int] = []
    while len(out) < count:
        for cls in transitions:
            if len(out) == count:
                break
            if not queues[cls]:
                order = torch.randperm(len(pools[cls]), generator=generator).tolist()
                queues[cls] = [pools[cls][j] for j in order]
            out.append(queues[cls].pop(0))
    return out


@dataclass(frozen=True)
class Evaluation:
    """One validation measurement during training."""

    step: int
    correlation: float
    mean_by_class: dict[str, float]
    """Mean encoding per *source* class of the pair (the class of the fed gradient)."""
    flipped: bool
    encoder_norm: float
    decoder_norm: float
    other_means: dict[str, float] = field(default_factory=dict)
    """Mean encoding of each identity class's rows (label 0, §1.3); empty without them."""
    correlation_with_neutral: float | None = None
    """Pearson correlation of the encodings with the labels over the pair's rows *and* the
    validation neutral sentences (label 0); None without neutral sentences."""
    neutral_abs_mean: float | None = None
    """Mean |encoding| of the validation neutral sentences (0 is ideal)."""

    def score(self, best_by: str) -> float:
        """The value the best checkpoint maximizes (§4.5): |correlation| or, with neutral
        sentences, |correlation_with_neutral|."""
        if best_by == "correlation_with_neutral" and self.correlation_with_neutral is not None:
            return abs(self.correlation_with_neutral)
        return abs(self.correlation)

    def row(self) -> dict:
        """A flat record for ``eval.csv`` and ``training.json``."""
        means = {f"mean_{k}": v for k, v in {**self.mean_by_class, **self.other_means}.items()}
        return {
            "step": self.step,
            "correlation": self.correlation,
            **means,
            "flipped": self.flipped,
            "encoder_norm": self.encoder_norm,
            "decoder_norm": self.decoder_norm,
            "correlation_with_neutral": self.correlation_with_neutral,
            "neutral_abs_mean": self.neutral_abs_mean,
        }


class EvalSet:
    """Validation source vectors with their labels; an evaluation is one matrix product.

    Rows of a class outside the pair (identity rows, §1.3) have label 0 and their own group: they
    are encoded with the rest, but the correlation, the sign flip and convergence look at the
    pair's rows only; their mean encodings are reported beside (``Evaluation.other_means``)."""

    def __init__(
        self, rows: RowVectors, pair: ClassPair, source: str, neutral: RowVectors | None = None
    ):
        self.matrix = rows.matrix  # (N, n)
        has_neutral = neutral is not None and len(neutral.matrix) > 0
        self.neutral = neutral.matrix if has_neutral else None  # (M, n), label 0
        labels = [pair.label(c, source) for c in rows.factual_class]
        self.labels = torch.tensor(labels, dtype=torch.float32)  # (N,)
        self.groups = [pair.source_class(c, source) for c in rows.factual_class]
        self.classes = pair.classes
        self.others = list(dict.fromkeys(c for c in rows.factual_class if c not in pair))
        self.in_pair = torch.tensor([c in pair for c in rows.factual_class], dtype=torch.bool)

    @torch.no_grad()
    def evaluate(self, model: Gradiend, step: int, normalize: bool, optimizer=None) -> Evaluation:
        """Correlation and class means of the encodings; flips ``model`` (and the optimizer's
        first moments) when ``normalize`` and the correlation is below ``FLIP_THRESHOLD``."""
        enc = model.encode(self.matrix)[:, 0].cpu()  # (N,)
        if self.others:
            corr = pearson(enc[self.in_pair], self.labels[self.in_pair])
        else:
            corr = pearson(enc, self.labels)
        flipped = normalize and model.latent_dim == 1 and corr < FLIP_THRESHOLD
        if flipped:
            model.flip_sign(optimizer)
            enc, corr = -enc, -corr

        def mean_of(group: str) -> float:
            return float(enc[[g == group for g in self.groups]].mean())

        means = {c: mean_of(c) for c in self.classes}
        other_means = {c: mean_of(c) for c in self.others}
        with_neutral = neutral_abs_mean = None
        if self.neutral is not None:
            neutral_enc = model.encode(self.neutral)[:, 0].cpu()  # (M,), after any flip
            pair_enc = enc[self.in_pair] if self.others else enc
            pair_labels = self.labels[self.in_pair] if self.others else self.labels
            with_neutral = pearson(
                torch.cat([pair_enc, neutral_enc]),
                torch.cat([pair_labels, torch.zeros(len(neutral_enc))]),
            )
            neutral_abs_mean = float(neutral_enc.abs().mean())
        return Evaluation(
            step,
            corr,
            means,
            flipped,
            **model.norms(),
            other_means=other_means,
            correlation_with_neutral=with_neutral,
            neutral_abs_mean=neutral_abs_mean,
        )


def diagnose(best: Evaluation | None, threshold: float, mean_threshold: float) -> str:
    """Why a run did or did not converge, in words (the first failed rule of ``converged``)."""
    if best is None:
        return "no evaluation"
    means = list(best.mean_by_class.values())
    shown = ", ".join(f"{c} {m:+.3f}" for c, m in best.mean_by_class.items())
    if best.step <= 0:
        return "not converged: the best evaluation is step 0, training never improved on it"
    if all(m > 0 for m in means) or all(m < 0 for m in means):
        return f"collapsed: every class encodes to the same sign ({shown})"
    if best.correlation < threshold:
        return (
            f"not converged: correlation {best.correlation:.3f} is below "
            f"train.convergence_threshold = {threshold}"
        )
    if min(abs(m) for m in means) < mean_threshold:
        return (
            f"not converged: a class mean is closer to 0 than "
            f"train.convergence_mean_threshold = {mean_threshold} ({shown})"
        )
    return "converged"


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
    diagnosis: str
    best_score: float | None = None
    """What the best checkpoint maximized (``train.best_by``); seeds are ranked by it."""

    def report(self, seed: int, input_dim: int) -> dict:
        """Headline scalars of the run: ``metrics/train/seed_<s>.json``."""
        best = self.best
        return {
            "seed": seed,
            "input_dim": input_dim,
            "steps": len(self.losses),
            "converged": self.converged,
            "diagnosis": self.diagnosis,
            "best_step": best.step if best else None,
            "best_correlation": best.correlation if best else None,
            "best_score": self.best_score,
            "best_correlation_with_neutral": best.correlation_with_neutral if best else None,
            "neutral_abs_mean": best.neutral_abs_mean if best else None,
            "mean_by_class": {**best.mean_by_class, **best.other_means} if best else None,
            "final_loss": self.losses[-1],
            "sign_flips": sum(e.flipped for e in self.evaluations),
        }


def train_gradiend(store: GradientStore, pair: ClassPair, settings, seed: int) -> TrainResult:
    """Train one GRADIEND on stored base-model gradients (docs/method.md §4).

    Args:
        store: the ``gradients`` stage's vectors: fixed training batches (``source`` and
            ``target`` kinds; their number fixes how many distinct signals a run sees) and the
            validation rows' ``source`` vectors (the GRADIEND's input dimension n is theirs).
        pair: the contrasted classes (labels and groups of the evaluation); stored batches and
            validation rows of any other class are identity rows (§1.3), scheduled in turn and
            reported as their own groups.
        settings: the ``train`` params — ``source``/``target`` (must match the store), AdamW
            ``learning_rate`` and ``weight_decay``, ``gradiend_batch_size`` batch vectors per step
            (larger: smoother steps, batches used up sooner), ``best_by`` (the checkpoint
            choice, §4.5: ``correlation_with_neutral`` prefers weights that keep neutral text
            near 0 over a marginally higher pair correlation), ``max_steps``, ``eval_steps``
            (smaller: a finer choice of the best checkpoint), ``normalize_sign`` and the
            convergence thresholds.
        seed: initialization and batch order.
    """
    source, target = settings.source, settings.target
    if (store.source, store.target) != (source, target):
        raise GradiendError(
            f"models/gradients holds {store.source}/{store.target} vectors but train.source/"
            f"train.target are {source}/{target}; rerun 'dvc repro gradients'."
        )
    eval_set = EvalSet(store.validation, pair, source, store.validation_neutral)
    n = eval_set.matrix.shape[1]
    model = Gradiend.initialised(n, seed, input_normalization=settings.input_normalization)
    # The closed-form gradients and AdamW in one chunked in-place pass set (Gradiend.fused_update):
    # the same update as closed_form_grads + torch.optim.AdamW(fused=True), ~6x cheaper at n = 35M.
    optimizer = GradiendAdamW(
        model, lr=settings.learning_rate, weight_decay=settings.weight_decay, eps=ADAM_EPS
    )
    per_step = settings.gradiend_batch_size
    max_steps, eval_steps = settings.max_steps, settings.eval_steps
    order = batch_schedule(store.train.classes, pair, max_steps * per_step, seed)
    sources, targets = store.train.vectors[source], store.train.vectors[target]
    normalize = settings.normalize_sign
    evaluations = [eval_set.evaluate(model, 0, normalize, optimizer)]
    best: Evaluation = evaluations[0]  # step 0 competes: a run may never improve on it
    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    losses: list[float] = []
    bar = progress(range(1, max_steps + 1), desc=f"train seed {seed}")
    for step in bar:
        picked = order[(step - 1) * per_step : step * per_step]
        # Row views, not sources[picked]: no (B, n) copy. A non-finite loss leaves the model as is.
        loss = model.fused_update(
            [sources[i] for i in picked], [targets[i] for i in picked], optimizer
        )
        if not np.isfinite(loss):
            raise GradiendError(
                f"train step {step}: the GRADIEND loss is {loss}; lower train.learning_rate."
            )
        losses.append(loss)
        if step % eval_steps == 0 or step == max_steps:
            ev = eval_set.evaluate(model, step, normalize, optimizer)
            evaluations.append(ev)
            bar.set_postfix(corr=f"{ev.correlation:+.3f}", loss=f"{loss:.3g}")
            if ev.score(settings.best_by) > best.score(settings.best_by):
                best = ev
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    thresholds = (settings.convergence_threshold, settings.convergence_mean_threshold)
    return TrainResult(
        model,
        best,
        evaluations,
        losses,
        converged(best, *thresholds),
        diagnose(best, *thresholds),
        best.score(settings.best_by),
    )
