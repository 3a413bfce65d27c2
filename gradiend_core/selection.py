"""Choosing one GRADIEND among the trained seeds (docs/method.md §4.7) and writing it.

The choice (``select_seed``, ``seed_summary``) is pure Python over the seeds' reports; only
``save_selected`` touches weights, to post-prune the chosen GRADIEND (§5.3) when that is on."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from gradiend_core.gradiend import load_gradiend, save_gradiend
from gradiend_core.io import atomic_dir, read_json
from gradiend_core.pruning import post_prune

MAX_AMONG_CONVERGED = "max validation score (train.best_by) among convergent seeds"
MAX_WITHOUT_CONVERGENCE = "max validation score (train.best_by; no seed converged)"


def select_seed(reports: list[dict]) -> dict:
    """Best converged seed by its validation score (ties: lower seed); if no seed converged, the
    best of all seeds. The score is the one its best checkpoint maximized (``best_score``,
    ``train.best_by``, §4.5), else the validation correlation. A seed without any evaluation
    (score None) ranks last."""
    pool = [r for r in reports if r["converged"]] or reports

    def rank(report: dict) -> tuple[float, int]:
        corr = report.get("best_score", report["best_correlation"])
        return (float("-inf") if corr is None else corr, -report["seed"])

    return max(pool, key=rank)


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation of ``values``:

        mean = (1/m) Σ x_i        std = sqrt( Σ (x_i - mean)² / (m - 1) )

    The sample (m - 1) form estimates the spread of a new seed rather than describing only the
    seeds at hand; its price is that one value has no spread: std is None for m < 2 and both are
    None for m = 0.
    """
    m = len(values)
    if m == 0:
        return None, None
    mean = math.fsum(values) / m
    if m < 2:
        return mean, None
    return mean, math.sqrt(math.fsum((x - mean) ** 2 for x in values) / (m - 1))


def seed_summary(reports: list[dict]) -> dict:
    """``metrics/select.json``: which seeds converged, which one was selected, and the multi-seed
    aggregate (§4.7).

    ``correlation_mean`` ± ``correlation_std`` summarise the best validation correlations of the
    *converged* seeds only (``mean_std``; a diverged seed would measure the failure rate, which
    ``convergent_count`` / ``trained_count`` already report); both are None when no seed converged.
    """
    best = select_seed(reports)
    converged = [r["seed"] for r in reports if r["converged"]]
    corr = [
        r["best_correlation"]
        for r in reports
        if r["converged"] and r["best_correlation"] is not None
    ]
    mean, std = mean_std(corr)
    return {
        "seeds_tried": [r["seed"] for r in reports],
        "convergent_seeds": converged,
        "convergent_count": len(converged),
        "trained_count": len(reports),
        "correlation_mean": mean,
        "correlation_std": std,
        "best_seed": best["seed"],
        "best_correlation": best["best_correlation"],
        "converged": best["converged"],
        "selection_strategy": MAX_AMONG_CONVERGED if converged else MAX_WITHOUT_CONVERGENCE,
    }


# Files of a GRADIEND folder that ``save_gradiend`` writes itself.
GRADIEND_FILES = (
    "config.json",
    "model.safetensors",
    "param_space.json",
    "kept_indices.safetensors",
)


def save_selected(source: str | Path, out: str | Path, settings) -> dict | None:
    """Write the chosen GRADIEND folder ``source`` to ``out``: a plain copy when
    ``settings.enabled`` is off, else post-pruned (``pruning.post_prune``) with a
    ``post_prune.json`` record beside the weights; return that record (None when off).

    Post-pruning here, in the stage that writes ``models/selected``, means evaluation and rewrite
    use the pruned GRADIEND without any change of their own; the parameter space is kept (the
    dropped coordinates are zero), so the folder stays interchangeable with an unpruned one.

    Args:
        source: a trained GRADIEND folder (``models/gradiend/seed_<s>``).
        out: the folder to (atomically) replace, ``models/selected``.
        settings: ``post_prune`` params — ``enabled``, ``topk`` (fraction or count; smaller: a
            sparser edit that may lose part of the feature) and ``by`` (the weight score).
    """
    source = Path(source)
    if not settings.enabled:
        with atomic_dir(out) as tmp:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
        return None
    model, space, context = load_gradiend(source)
    pruned, kept = post_prune(model, settings.topk, settings.by)
    record = {
        "by": settings.by,
        "topk": settings.topk,
        "kept": int(kept.numel()),
        "input_dim": model.input_dim,
        "kept_fraction": kept.numel() / model.input_dim,
    }
    extra = {
        p.name: read_json(p, "file of the selected GRADIEND")
        for p in sorted(source.glob("*.json"))
        if p.name not in GRADIEND_FILES
    }
    save_gradiend(out, pruned, space, context, {**extra, "post_prune.json": record})
    return record


# Figures of each pair that a suite's metrics file repeats under ``pairs`` (a metrics file stays a
# short, readable summary; the full record of every pair is in its own stage outputs).
SUITE_KEYS = {
    "select": ("best_seed", "best_correlation", "converged", "convergent_count", "trained_count"),
    "evaluate_encoder": ("correlation", "accuracy", "neutral_abs_mean"),
}


def suite_metrics(per_pair: dict[str, dict], kind: str = "select") -> dict:
    """One metrics file over every pair of ``feature.pairs``: the first pair's full record at the
    top level (so a one-pair feature's file is exactly that pair's), plus, for a suite of several
    pairs, ``pairs.<name>`` with each pair's headline figures (``SUITE_KEYS``)."""
    names = list(per_pair)
    out = dict(per_pair[names[0]])
    if len(names) > 1:
        out["pairs"] = {
            name: {key: _flat(record, key) for key in SUITE_KEYS[kind]}
            for name, record in per_pair.items()
        }
    return out


def _flat(record: dict, key: str):
    """``neutral_abs_mean`` reads ``record["neutral"]["abs_mean"]``; other keys read directly."""
    if key == "neutral_abs_mean":
        return (record.get("neutral") or {}).get("abs_mean")
    return record.get(key)
