"""Encoder evaluation over the stored test and neutral gradients (docs/method.md §6).

Three kinds of rows: the pair's test rows (labels ±1), identity rows of classes outside the pair
(label 0, §1.3; each class its own group) and neutral sentences (label 0)."""

from __future__ import annotations

import pandas as pd
import torch

from gradiend_core.errors import GradiendError
from gradiend_core.feature import ClassPair
from gradiend_core.gradiend import Gradiend
from gradiend_core.stats import pearson, ternary
from gradiend_core.vectors import GradientStore, RowVectors

FRAME_COLUMNS = ["type", "source_class", "label", "encoded", "text"]


@torch.no_grad()
def encode_rows(model: Gradiend, rows: RowVectors, pair: ClassPair, source: str) -> pd.DataFrame:
    """One record per stored row vector: its type, group, label and encoding h = enc(g).

    The pair's rows are type ``test`` with their source class and label ±1 (§3); rows of a class
    outside the pair are type ``identity``, grouped under their class, label 0 (§1.3); neutral
    sentences are type and group ``neutral``, label 0 (§1.6)."""
    encoded = model.encode(rows.matrix.to(model.encoder_weight.device))[:, 0].cpu()  # (N,)
    out = []
    for cls, text, value in zip(rows.factual_class, rows.texts, encoded.tolist(), strict=True):
        kind = "neutral" if cls == "neutral" else "test" if cls in pair else "identity"
        out.append(
            {
                "type": kind,
                "source_class": "neutral" if kind == "neutral" else pair.source_class(cls, source),
                "label": 0 if kind == "neutral" else pair.label(cls, source),
                "encoded": value,
                "text": text,
            }
        )
    # Typed columns even without rows (no neutral text, §1.6), so concatenating keeps floats.
    return pd.DataFrame(out, columns=FRAME_COLUMNS).astype({"label": "int64", "encoded": "float64"})


def encoder_metrics(frame: pd.DataFrame, classes: list[str]) -> dict:
    """§6: correlation and accuracy on the pair's test rows, plus neutral-aware views.

    ``correlation`` is Pearson(encoding, label) on the pair's test rows; ``accuracy`` counts sign
    agreement; the ``*_with_neutral`` views add the neutral rows with label 0 (ternary cut at
    ±0.5); ``neutral.abs_mean`` is how far neutral text is pushed towards either class (0 is
    ideal). Identity rows (§1.3) stay out of all of these: ``groups.<class>`` reports, per class
    outside the pair, their count, mean and mean |encoding| (0 is ideal for both), so a GRADIEND
    that maps an unrelated class onto the pair's axis shows there, not as a lower correlation.
    """
    identity = frame[frame["type"] == "identity"]
    groups = {
        g: {
            "n": int(len(part)),
            "mean": float(part["encoded"].mean()),
            "abs_mean": float(part["encoded"].abs().mean()),
        }
        for g, part in identity.groupby("source_class", sort=False)
    }
    frame = frame[frame["type"] != "identity"]
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
        "groups": groups,
        "n_test_rows": int(len(test)),
    }


def evaluate_encoder(model: Gradiend, context, store: GradientStore) -> tuple[pd.DataFrame, dict]:
    """Encode the stored test and neutral vectors; return the per-row table and the metrics.

    ``context`` is the GRADIEND's saved ``GradiendContext`` (classes and source), so the labels
    match what the GRADIEND was trained on; ``store`` holds the ``gradients`` stage's vectors.
    """
    if store.source != context.source:
        raise GradiendError(
            f"models/gradients holds {store.source} vectors but the selected GRADIEND was trained "
            f"on {context.source} vectors; rerun 'dvc repro'."
        )
    pair = context.pair
    frame = pd.concat(
        [
            encode_rows(model, store.test, pair, context.source),
            encode_rows(model, store.neutral, pair, context.source),
        ],
        ignore_index=True,
    )
    metrics = encoder_metrics(frame, pair.classes)
    return frame, {**metrics, "source": context.source, "objective": context.objective}
