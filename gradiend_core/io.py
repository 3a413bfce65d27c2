"""Atomic file writes and careful reads.

Every output is written to a temporary file in the destination folder and then renamed into place,
so a killed stage never leaves a half-written file that a later stage could mistake for a result.
Reads of our own formats turn low-level decoding errors into one-line ``GradiendError`` messages.
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from gradiend_core.errors import GradiendError


def _remove_stale_temporaries(path: Path) -> None:
    """Delete the temporaries of ``path`` that a killed earlier run left behind (SIGKILL skips
    ``finally``)."""
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        if stale.is_dir():
            shutil.rmtree(stale, ignore_errors=True)
        else:
            stale.unlink(missing_ok=True)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; renamed onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _clean(obj: Any) -> Any:
    """JSON-safe, stable structure: floats stay floats, NaN/inf become None, tuples lists."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalars
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps_json(obj: Any) -> str:
    """Canonical JSON text: sorted keys, two-space indent, trailing newline (byte-stable across
    runs)."""
    return json.dumps(_clean(obj), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, dumps_json(obj))


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_with(path: str | Path, writer: Callable[[Path], None]) -> None:
    """Call ``writer(tmp_path)`` and move the result onto ``path`` atomically."""
    with atomic_path(path) as tmp:
        writer(tmp)


def write_parquet(path: str | Path, frame) -> None:
    """A DataFrame as parquet, without its index."""
    write_with(path, lambda tmp: frame.to_parquet(tmp, index=False))


def write_csv(path: str | Path, table) -> None:
    """A DataFrame, a list of records or a mapping column -> values, as CSV without an index."""
    import pandas as pd

    frame = table if isinstance(table, pd.DataFrame) else pd.DataFrame(table)
    write_with(path, lambda tmp: frame.to_csv(tmp, index=False))


def read_json(path: str | Path, what: str) -> Any:
    path = Path(path)
    if not path.exists():
        raise GradiendError(f"{path}: missing ({what}); run the stage that writes it (dvc repro).")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GradiendError(
            f"{path}: not valid JSON ({exc}); delete it and rerun dvc repro."
        ) from exc


def read_csv(path: str | Path, what: str):
    """A CSV table this pipeline wrote (``write_csv``; its floats read back exactly), or a one-line
    error naming the file."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise GradiendError(f"{path}: missing ({what}); run the stage that writes it (dvc repro).")
    try:
        return pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise GradiendError(
            f"{path}: cannot be read as CSV ({exc}); delete it and rerun dvc repro."
        ) from exc


def read_parquet(path: str | Path, required_columns: list[str], what: str):
    """Read a parquet file, failing with a one-line message if it is missing, corrupt or lacks
    columns."""
    import pandas as pd

    path = Path(path)
    if not path.exists():
        raise GradiendError(f"{path}: missing ({what}); run the stage that writes it (dvc repro).")
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for corrupt files
        raise GradiendError(
            f"{path}: cannot be read as parquet ({type(exc).__name__}); the file is corrupt -"
            " delete it and rerun dvc repro."
        ) from exc
    check_columns(frame, required_columns, str(path))
    return frame


def check_columns(frame, required_columns: list[str], where: str) -> None:
    missing = [c for c in required_columns if c not in frame.columns]
    if missing:
        raise GradiendError(
            f"{where}: missing required column(s) {missing}; found {list(frame.columns)}. "
            "Add the column(s) or point the param at the right column."
        )


def save_tensors(path: str | Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """``tensors`` as one safetensors file, atomically. ``metadata`` may hold one key at most:
    safetensors writes its keys in hash-map order, which varies between processes, so two keys
    would make the bytes of the same content vary (put a JSON object under one key instead)."""
    from safetensors.torch import save_file

    if metadata is not None and len(metadata) > 1:
        raise ValueError(f"safetensors metadata must have one key (got {sorted(metadata)})")

    contiguous = {k: v.contiguous() for k, v in tensors.items()}
    write_with(path, lambda tmp: save_file(contiguous, str(tmp), metadata=metadata))


def load_tensors(path: str | Path, what: str) -> dict:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.exists():
        raise GradiendError(f"{path}: missing ({what}); run the stage that writes it (dvc repro).")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise GradiendError(
            f"{path}: cannot be read as safetensors ({exc}); the file is corrupt - delete it and"
            " rerun dvc repro."
        ) from exc
