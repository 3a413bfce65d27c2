"""Choosing one GRADIEND among the trained seeds (docs/method.md §4.7). Pure Python: the
``select`` stage reads the seeds' reports, not their weights."""

from __future__ import annotations

MAX_AMONG_CONVERGED = "max validation correlation among convergent seeds"
MAX_WITHOUT_CONVERGENCE = "max validation correlation (no seed converged)"


def select_seed(reports: list[dict]) -> dict:
    """Best converged seed by validation correlation (ties: lower seed); if no seed converged, the
    best of all seeds. A seed without any evaluation (correlation None) ranks last."""
    pool = [r for r in reports if r["converged"]] or reports

    def rank(report: dict) -> tuple[float, int]:
        corr = report["best_correlation"]
        return (float("-inf") if corr is None else corr, -report["seed"])

    return max(pool, key=rank)


def seed_summary(reports: list[dict]) -> dict:
    """``metrics/select.json``: which seeds converged and which one was selected."""
    best = select_seed(reports)
    converged = [r["seed"] for r in reports if r["converged"]]
    return {
        "seeds_tried": [r["seed"] for r in reports],
        "convergent_seeds": converged,
        "convergent_count": len(converged),
        "best_seed": best["seed"],
        "best_correlation": best["best_correlation"],
        "converged": best["converged"],
        "selection_strategy": MAX_AMONG_CONVERGED if converged else MAX_WITHOUT_CONVERGENCE,
    }
