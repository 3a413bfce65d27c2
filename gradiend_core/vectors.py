"""Base-model gradient vectors computed once and reused by every seed and experiment (§4.2).

The base model is frozen, so the gradient vector of a fixed batch of rows never changes. The
``gradients`` stage computes (``gradiend_core.gradients.compute_store``), once per (base model,
data, θ, objective), and this module stores:

* the **training batches**: each class's training rows, in the data stage's shuffled order, are cut
  into fixed batches of ``train.batch_size`` rows (a trailing partial batch is dropped); for every
  batch the batch-mean ``source`` and ``target`` vectors;
* the **validation rows** (the first ``train.eval_max_per_class`` of each class): one ``source``
  vector per row, for the evaluations during training;
* the **test and neutral rows** of the encoder evaluation: one ``source`` vector per test row and
  one factual vector per neutral sentence (§6).

Training a seed then needs no base-model pass at all: the seed only draws the order of the
batches. Changing ``train.learning_rate`` (or adding a seed) reuses the stored vectors through
DVC's cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from gradiend_core.io import atomic_dir, load_tensors, read_json, save_tensors, write_json


@dataclass(frozen=True)
class BatchVectors:
    """Batch-mean gradient vectors of fixed training batches: ``vectors[kind]`` is (K, n)."""

    classes: list[str]  # factual class of each of the K batches
    vectors: dict[str, torch.Tensor]

    def indices_of(self, cls: str) -> list[int]:
        """Positions of ``cls``'s batches, in stored order."""
        return [i for i, c in enumerate(self.classes) if c == cls]


@dataclass(frozen=True)
class RowVectors:
    """One vector per row (validation or test rows, or neutral sentences), with its labels."""

    matrix: torch.Tensor  # (N, n)
    factual_class: list[str]  # "neutral" for neutral sentences
    texts: list[str]


# ---- the stored form -----------------------------------------------------------------------


def save_rows(folder: Path, name: str, rows: RowVectors) -> None:
    save_tensors(folder / f"{name}.safetensors", {"matrix": rows.matrix.contiguous()})
    write_json(folder / f"{name}.json", {"factual_class": rows.factual_class, "texts": rows.texts})


def load_rows(folder: Path, name: str) -> RowVectors:
    matrix = load_tensors(folder / f"{name}.safetensors", f"{name} gradient vectors")["matrix"]
    meta = read_json(folder / f"{name}.json", f"{name} rows")
    return RowVectors(matrix, meta["factual_class"], meta["texts"])


ROW_PARTS = ("validation", "test", "neutral", "validation_neutral")
TRAINING_PARTS = ("train", "validation", "validation_neutral")


@dataclass(frozen=True)
class GradientStore:
    """Everything the ``gradients`` stage writes (one folder, DVC-cached)."""

    source: str
    target: str
    train: BatchVectors
    validation: RowVectors
    test: RowVectors
    neutral: RowVectors
    validation_neutral: RowVectors | None = None
    """Neutral sentences encoded during training (label 0), disjoint from ``neutral``."""

    def save(self, folder: str | Path) -> None:
        """Write the store atomically: a reader sees the old folder or the complete new one."""
        with atomic_dir(folder) as tmp:
            save_tensors(tmp / "train.safetensors", self.train.vectors)
            write_json(
                tmp / "store.json",
                {"source": self.source, "target": self.target, "batch_classes": self.train.classes},
            )
            for name in ROW_PARTS:
                if getattr(self, name) is not None:
                    save_rows(tmp, name, getattr(self, name))

    @classmethod
    def load(cls, folder: str | Path, parts: tuple[str, ...] = TRAINING_PARTS):
        """Read the store; only the ``parts`` a stage needs are loaded (the rest stay None). The
        default is what training reads: the batches, the validation rows and their neutral
        sentences."""
        folder = Path(folder)
        meta = read_json(folder / "store.json", "gradient store")
        train = None
        if "train" in parts:
            vectors = load_tensors(folder / "train.safetensors", "training batch vectors")
            train = BatchVectors(meta["batch_classes"], vectors)
        rows = {
            n: load_rows(folder, n) if n in parts and (folder / f"{n}.json").exists() else None
            for n in ROW_PARTS
        }
        return cls(meta["source"], meta["target"], train, **rows)
