"""Encoder evaluation: encode test-split and neutral gradients, summarise (docs/method.md §6)."""

from __future__ import annotations

import random

import pandas as pd
import torch

from gradiend_core.errors import GradiendError
from gradiend_core.feature import ClassPair
from gradiend_core.gradiend import Gradiend
from gradiend_core.gradients import GradientComputer
from gradiend_core.runtime import progress
from gradiend_core.stats import pearson, ternary

FRAME_COLUMNS = ["type", "source_class", "label", "encoded", "text"]


@torch.no_grad()
def _encode(model: Gradiend, vector: torch.Tensor) -> float:
    return float(model.encode(vector.to(model.encoder_weight.device))[0])


def encode_examples(
    computer: GradientComputer, model: Gradiend, rows: pd.DataFrame, pair: ClassPair, source: str
) -> pd.DataFrame:
    """One record per masked row: its source class, label (±1) and encoding."""
    out = []
    rows_iter = progress(rows.itertuples(index=False), total=len(rows), desc="encode test rows")
    for i, r in enumerate(rows_iter):
        vec = computer.vectors(
            [r.masked], [r.factual], [r.alternative], (source,), where=f"test example {i}"
        )[source]
        out.append(
            {
                "type": "test",
                "source_class": pair.source_class(r.factual_class, source),
                "label": pair.label(r.factual_class, source),
                "encoded": _encode(model, vec),
                "text": r.masked,
            }
        )
    return pd.DataFrame(out, columns=FRAME_COLUMNS)


def encode_neutral(
    computer: GradientComputer, model: Gradiend, texts: list[str], seed: int
) -> pd.DataFrame:
    """One record per neutral sentence (label 0): the encoding of its factual gradient at one
    seeded random position (§1.6)."""
    rng = random.Random(seed)
    out = []
    for text in progress(texts, desc="encode neutral rows"):
        vec = computer.neutral_vector(text, rng)
        out.append(
            {
                "type": "neutral",
                "source_class": "neutral",
                "label": 0,
                "encoded": _encode(model, vec),
                "text": text,
            }
        )
    return pd.DataFrame(out, columns=FRAME_COLUMNS)


def encoder_metrics(frame: pd.DataFrame, classes: list[str]) -> dict:
    """§6: correlation and accuracy on the pair's test rows, plus neutral-aware views.

    ``correlation`` is Pearson(encoding, label) on test rows; ``accuracy`` counts sign agreement;
    the ``*_with_neutral`` views add the neutral rows with label 0 (ternary cut at ±0.5);
    ``neutral.abs_mean`` is how far neutral text is pushed towards either class (0 is ideal).
    """
    test = frame[frame["type"] == "test"]
    if test["label"].nunique() < 2:
        raise GradiendError(
            "encoder evaluation needs test rows of both classes; regenerate data with more rows "
            "per class."
        )
    enc = torch.tensor(test["encoded"].to_numpy())
    lab = torch.tensor(test["label"].to_numpy(), dtype=torch.float64)
    all_enc = torch.tensor(frame["encoded"].to_numpy())
    all_lab = torch.tensor(frame["label"].to_numpy(), dtype=torch.float64)
    neutral = frame[frame["type"] == "neutral"]["encoded"]
    has_neutral = len(neutral) > 0
    return {
        "correlation": pearson(enc, lab),
        "accuracy": float(((enc >= 0).double() * 2 - 1 == lab).double().mean()),
        "correlation_with_neutral": pearson(all_enc, all_lab),
        "accuracy_ternary_with_neutral": float(
            (ternary(all_enc) == all_lab.long()).double().mean()
        ),
        "mean_by_class": {
            c: float(test[test["source_class"] == c]["encoded"].mean()) for c in classes
        },
        "neutral": {
            "n": int(len(neutral)),
            "mean": float(neutral.mean()) if has_neutral else None,
            "abs_mean": float(neutral.abs().mean()) if has_neutral else None,
            "std": float(neutral.std(ddof=0)) if has_neutral else None,
        },
        "n_test_rows": int(len(test)),
    }


def evaluate_encoder(
    computer: GradientComputer,
    model: Gradiend,
    context,
    test_rows: pd.DataFrame,
    neutral_texts: list[str],
    seed: int,
) -> tuple[pd.DataFrame, dict]:
    """Encode the test rows and the neutral texts; return the per-row table and the metrics.

    ``context`` is the GRADIEND's saved ``GradiendContext`` (classes and source), so the labels
    match what the GRADIEND was trained on; ``seed`` picks the neutral rows' target positions.
    """
    pair = context.pair
    frame = pd.concat(
        [
            encode_examples(computer, model, test_rows, pair, context.source),
            encode_neutral(computer, model, neutral_texts, seed),
        ],
        ignore_index=True,
    )
    metrics = encoder_metrics(frame, pair.classes)
    return frame, {**metrics, "source": context.source, "objective": context.objective}
