"""Already-masked tables ("prepared datasets") -> candidate example rows (docs/method.md §1.7).

A prepared table holds rows that are already masked, in the layout the method's published
datasets use: one row per masked sentence with its class, its factual token and, optionally, the
alternative token and the split. A table is recognised by its ``masked`` column. Three layouts
are read (``gradiend_core.data`` loads the files and hub datasets; this module only interprets
the columns):

* one table (.csv/.parquet, or a hub dataset) with a class column;
* a folder with one file per class, ``<class>.csv`` or ``<class>.parquet``;
* a hub dataset with one config per class (``hf:<id>``, configs named like ``feature.classes``).

Columns, by role (the first name present wins; names match exactly):

===================  ====================================================  =====================
role                 column names                                          when absent
===================  ====================================================  =====================
masked text          ``masked``                                            (not a prepared table)
class                ``factual_class``, ``label_class``, ``class``         file/config name, else
                                                                           an error
factual token        ``factual``, ``label``, ``token``, the row's class    an error
alternative token    ``alternative``, the other pair class                 drawn (``draw_...``)
split                ``split`` (train; validation, val, valid, dev; test)  seeded split (§1.5)
original text        ``text``                                              masks filled with the
                                                                           factual token
===================  ====================================================  =====================

Rows of classes outside ``feature.classes`` are skipped (a published dataset may hold more
classes than a feature uses). Every token must be a target word of its class in
``feature.targets`` (any casing), since the MLM head, the class probabilities and the rewrite know
only those words.
"""

from __future__ import annotations

import pandas as pd

from gradiend_core.errors import GradiendError
from gradiend_core.feature import ClassPair, alternative_class, apply_casing

PREPARED_COLUMNS = ["masked", "text", "split", "factual_class", "factual", "alternative"]
CLASS_COLUMNS = ("factual_class", "label_class", "class")
FACTUAL_COLUMNS = ("factual", "label", "token")
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
}


def is_prepared(columns) -> bool:
    """A table of already-masked rows (it has a ``masked`` column), not raw text."""
    return "masked" in [str(c) for c in columns]


def _present(value) -> bool:
    return value is not None and not (isinstance(value, float) and pd.isna(value)) and value != ""


def split_name(value, where: str, row: int) -> str:
    """A split value of a table in the pipeline's spelling (``train``/``validation``/``test``)."""
    name = SPLIT_NAMES.get(str(value).strip().lower()) if _present(value) else None
    if name is None:
        raise GradiendError(
            f"{where}: row {row} has split {value!r}; use train, validation (val, valid, dev) or"
            " test, or drop the 'split' column to split with data.seed."
        )
    return name


def table_rows(
    frame: pd.DataFrame, where: str, feature, file_class: str | None = None
) -> pd.DataFrame:
    """One prepared table -> rows with ``PREPARED_COLUMNS`` (docs/method.md §1.7).

    Args:
        frame: the table as read.
        where: the file or hub dataset, named in errors.
        feature: ``feature`` params: ``classes`` (rows of other classes are skipped), ``pair``,
            ``targets`` (every token must be one of its class's words) and ``mask`` (every
            masked text must contain it).
        file_class: the class of every row when the layout names it (a folder's file, a hub
            config); otherwise the table needs a class column.

    ``split`` is None for every row of a table without a split column, ``alternative`` None where
    the row gives none (drawn later from the other class, ``draw_alternatives``).
    """
    columns = [str(c) for c in frame.columns]
    frame = frame.set_axis(columns, axis=1)
    class_col = next((c for c in CLASS_COLUMNS if c in columns), None)
    if file_class is None and class_col is None:
        raise GradiendError(
            f"{where}: a table of masked rows needs a class column ({', '.join(CLASS_COLUMNS)});"
            f" found {columns}; add one, or put one file per class in a folder."
        )
    pair = ClassPair.of_feature(feature)
    targets, mask = feature.targets, feature.mask
    words = {c: {w.lower() for w in targets[c]} for c in feature.classes}
    out = []
    for i, rec in enumerate(frame.to_dict("records")):
        cls = file_class if file_class is not None else str(rec[class_col])
        if cls not in feature.classes:
            continue
        masked = rec["masked"]
        if not isinstance(masked, str) or mask not in masked:
            raise GradiendError(
                f"{where}: row {i} has no {mask!r} in column 'masked' ({str(masked)[:60]!r});"
                " every masked text needs the placeholder of feature.mask."
            )
        factual_col = next((c for c in (*FACTUAL_COLUMNS, cls) if c in columns), None)
        factual = rec[factual_col] if factual_col is not None else None
        if not _present(factual):
            raise GradiendError(
                f"{where}: row {i} (class {cls!r}) gives no factual token; add a column"
                f" {' or '.join(repr(c) for c in FACTUAL_COLUMNS)} (or one named {cls!r})."
            )
        factual = str(factual).strip()
        _require_target(factual, cls, words, targets, where, i)
        other = alternative_class(pair, cls)
        alternative = None
        if other == cls:
            alternative = factual  # an identity row (§1.3)
        else:
            alt_col = next((c for c in ("alternative", other) if c in columns), None)
            if alt_col is not None and _present(rec[alt_col]):
                alternative = str(rec[alt_col]).strip()
                _require_target(alternative, other, words, targets, where, i)
        split = split_name(rec["split"], where, i) if "split" in columns else None
        text = rec.get("text")
        out.append(
            {
                "masked": masked,
                "text": str(text) if _present(text) else masked.replace(mask, factual),
                "split": split,
                "factual_class": cls,
                "factual": factual,
                "alternative": alternative,
            }
        )
    return pd.DataFrame(out, columns=PREPARED_COLUMNS)


def _require_target(token: str, cls: str, words, targets, where: str, row: int) -> None:
    if token.lower() not in words[cls]:
        raise GradiendError(
            f"{where}: row {row} has the {cls!r} token {token!r}, which is not in"
            f" feature.targets[{cls!r}] = {targets[cls]}; add it there (a single-token word) or"
            " drop the row."
        )


def token_distribution(tokens: list[str]) -> tuple[list[str], list[float]]:
    """The lowercased tokens and their relative frequencies, tokens in sorted order."""
    counts: dict[str, int] = {}
    for t in tokens:
        counts[t.lower()] = counts.get(t.lower(), 0) + 1
    names = sorted(counts)
    total = sum(counts.values())
    return names, [counts[n] / total for n in names]


def draw_alternatives(
    rows: list[dict], factual_by_class: dict[str, list[str]], pair: ClassPair, rng
) -> None:
    """Fill a missing ``alternative`` (in place) by drawing from the other class (§1.7).

    For a row of pair class C without an alternative token, the alternative is drawn from the
    factual tokens of the other class's candidate rows, lowercased and weighted by how often each
    occurs (a class that says *she* 90 times and *her* 10 times gives *she* with p = 0.9), then
    given the factual casing. Rows are visited in order with one generator (``data.seed``), so
    the draw is reproducible. Drawing keeps the other class's own word mix; pairing by position
    (§1.1) is not possible because a prepared row need not use the first word of its class.
    """
    cache: dict[str, tuple[list[str], list[float]]] = {}
    for row in rows:
        if row["alternative"] is not None:
            continue
        other = pair.other(row["factual_class"])
        if other not in cache:
            cache[other] = token_distribution(factual_by_class[other])
        names, weights = cache[other]
        pick = names[int(rng.choice(len(names), p=weights))]
        row["alternative"] = apply_casing(pick, row["factual"])
