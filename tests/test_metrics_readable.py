"""Metrics files hold headline scalars only, so `dvc metrics show` and `dvc exp show` stay readable
in a terminal; per-tensor and per-epoch details live in plots/ tables."""

from __future__ import annotations

import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MAX_VALUES = 60


def count_values(obj) -> int:
    """Leaves of a JSON document (a list counts each element)."""
    if isinstance(obj, dict):
        return sum(count_values(v) for v in obj.values())
    if isinstance(obj, list):
        return sum(count_values(v) for v in obj)
    return 1


def test_count_values_by_hand():
    assert count_values({"a": 1, "b": {"c": [1, 2, 3], "d": None}}) == 5
    assert count_values([]) == 0


def test_every_committed_metrics_file_has_at_most_60_values():
    files = sorted((REPO / "metrics").rglob("*.json"))
    assert files, "no committed metrics"
    for path in files:
        n = count_values(json.loads(path.read_text(encoding="utf-8")))
        assert n <= MAX_VALUES, f"{path.relative_to(REPO)} holds {n} values"
