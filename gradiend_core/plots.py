"""Every figure. PNGs are written without timestamps or version metadata, so reruns are byte-
identical."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from gradiend_core.feature import ClassPair  # noqa: E402
from gradiend_core.io import write_with  # noqa: E402


def _save(fig, path: str | Path) -> None:
    write_with(
        path, lambda tmp: fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
    )
    plt.close(fig)


def training_curves(
    losses, evals, classes: list[str], best_step: int | None, path: str | Path
) -> None:
    """Loss per step and validation correlation / class means per evaluation, side by side.

    ``losses`` and ``evals`` are tables (DataFrames, records or column mappings) with columns
    ``step, loss`` and ``step, correlation, mean_<class>``.
    """
    losses, evals = pd.DataFrame(losses), pd.DataFrame(evals)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(losses["step"], losses["loss"], lw=1)
    ax1.set(xlabel="step", ylabel="MSE loss", yscale="log", title="GRADIEND reconstruction loss")
    ax2.plot(evals["step"], evals["correlation"], "k-o", ms=3, label="correlation")
    for c in classes:
        ax2.plot(
            evals["step"],
            evals[f"mean_{c}"],
            "--",
            marker=".",
            label=f"mean encoding ({c} gradient)",
        )
    if best_step is not None:
        ax2.axvline(best_step, color="gray", ls=":", label=f"best step {best_step}")
    ax2.set(xlabel="step", ylim=(-1.05, 1.05), title="validation")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def encodings(frame: pd.DataFrame, classes: list[str], path: str | Path) -> None:
    """Box and strip plot of the encodings per source class and for neutral rows."""
    groups = [*classes, "neutral"]
    data = [frame[frame["source_class"] == g]["encoded"].to_numpy() for g in groups]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.boxplot([d if len(d) else [float("nan")] for d in data], showfliers=False)
    ax.set_xticks(
        range(1, len(groups) + 1), [f"{g}\n(n={len(d)})" for g, d in zip(groups, data, strict=True)]
    )
    for i, d in enumerate(data, start=1):
        ax.scatter([i + (j % 7 - 3) * 0.03 for j in range(len(d))], d, s=8, alpha=0.6)
    ax.axhline(0, color="gray", lw=0.5)
    ax.set(
        ylabel="encoding",
        ylim=(-1.05, 1.05),
        title="GRADIEND encodings on test gradients (by class of the fed gradient)",
    )
    fig.tight_layout()
    _save(fig, path)


def decoder_heatmap(grid: pd.DataFrame, classes: list[str], path: str | Path) -> None:
    """Rows: feature factor; columns: η; panels: LMS ratio and P(class) shift vs base."""
    panels = [("lms_ratio", "LMS / base LMS")] + [
        (f"delta_p_{c}", f"P({c}) - base, all test rows") for c in classes
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.2))
    for ax, (col, title) in zip(axes, panels, strict=True):
        table = grid.pivot(index="feature_factor", columns="learning_rate", values=col)
        # Points the search skipped are NaN: drawn blank, ignored by the color scale.
        extent = float(np.nanmax(np.abs(table.values)))
        cmap, kw = (
            ("viridis", {})
            if col == "lms_ratio"
            else ("coolwarm", {"vmin": -extent, "vmax": extent})
        )
        im = ax.imshow(table.values, aspect="auto", cmap=cmap, **kw)
        ax.set_xticks(
            range(len(table.columns)), [f"{v:g}" for v in table.columns], rotation=90, fontsize=7
        )
        ax.set_yticks(range(len(table.index)), [f"{v:+g}" for v in table.index])
        ax.set(xlabel="learning rate η", ylabel="feature factor f", title=title)
        fig.colorbar(im, ax=ax)
    fig.tight_layout()
    _save(fig, path)


def probability_shift(
    grid: pd.DataFrame, base: dict, classes: list[str], selection: dict, path: str | Path
) -> None:
    """P(class) on the other class's rows and LMS as functions of η, one line per feature factor."""
    fig, axes = plt.subplots(1, len(classes) + 1, figsize=(5 * (len(classes) + 1), 3.6))
    for ax, cls in zip(axes[:-1], classes, strict=True):
        other = ClassPair.of(classes).other(cls)
        for f, part in grid.groupby("feature_factor"):
            ax.plot(
                part["learning_rate"], part[f"p_{cls}_on_{other}"], marker=".", label=f"f = {f:+g}"
            )
        ax.axhline(base["probs_by_dataset"][other][cls], color="gray", ls=":", label="base")
        chosen = selection.get(cls)
        if chosen:
            ax.plot(
                [chosen["learning_rate"]],
                [chosen["value"]],
                "k*",
                ms=12,
                label="selected (strengthen)",
            )
        ax.set(
            xscale="log",
            xlabel="learning rate η",
            ylabel=f"P({cls})",
            title=f"P({cls}) on {other} rows",
        )
        ax.legend(fontsize=7)
    ax = axes[-1]
    for f, part in grid.groupby("feature_factor"):
        ax.plot(part["learning_rate"], part["lms"], marker=".", label=f"f = {f:+g}")
    ax.axhline(base["lms"], color="gray", ls=":", label="base")
    ax.set(xscale="log", xlabel="learning rate η", ylabel="LMS", title="language-modelling score")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def _not_applicable_figure(reason: str, path: str | Path) -> None:
    """A small figure that only says why a probe has no result (e.g. a masked LM)."""
    fig, ax = plt.subplots(figsize=(6, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, reason, ha="center", va="center", wrap=True)
    _save(fig, path)


def generation_rates(metrics: dict, classes: list[str], path: str | Path) -> None:
    """Bars: share of continuations that mention each class, base vs rewritten, per decoding mode
    (greedy, sampled) and over all continuations; one panel per class."""
    if not metrics["applicable"]:
        _not_applicable_figure(metrics["reason"], path)
        return
    groups = [("all", metrics["rates"])] + list(metrics["rates_by_mode"].items())
    fig, axes = plt.subplots(1, len(classes), figsize=(5 * len(classes), 3.6), sharey=True)
    width = 0.38
    for ax, cls in zip(axes, classes, strict=True):
        for offset, model in ((-width / 2, "base"), (width / 2, "rewritten")):
            values = [rates[model][cls] for _, rates in groups]
            heights = [float("nan") if v is None else v for v in values]
            bars = ax.bar([i + offset for i in range(len(groups))], heights, width, label=model)
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
        ax.set_xticks(range(len(groups)), [name for name, _ in groups])
        ax.set(
            ylim=(0, 1.05),
            ylabel="share of continuations",
            title=f"continuations that mention '{cls}'",
        )
        ax.legend(fontsize=8)
    fig.suptitle(
        f"{metrics['prompts']} neutral prompts, {metrics['continuations_per_model']} "
        "continuations per model",
        fontsize=9,
    )
    fig.tight_layout()
    _save(fig, path)


def bias_scatter(table: pd.DataFrame, metrics: dict, classes: list[str], path: str | Path) -> None:
    """P(A) - P(B) after each occupation prompt against its stereotype label (towards A), base and
    rewritten, with each model's least-squares line and the ``examples`` labelled."""
    if not metrics["applicable"]:
        _not_applicable_figure(metrics["reason"], path)
        return
    a, b = classes
    x = table["stereotype"].to_numpy()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for model, marker in (("base", "o"), ("rewritten", "^")):
        y = table[f"gap_{model}"].to_numpy()
        r = metrics["stereotype_correlation"][model]
        points = ax.scatter(x, y, s=10, alpha=0.6, marker=marker, label=f"{model} (r = {r:+.3f})")
        if len(x) > 1 and np.ptp(x) > 0:
            slope, intercept = np.polyfit(x, y, 1)
            ends = np.array([x.min(), x.max()])
            ax.plot(ends, slope * ends + intercept, color=points.get_facecolor()[0], lw=1)
    for job, example in metrics["examples"].items():
        for model in ("base", "rewritten"):
            ax.annotate(job, (example["stereotype"], example[model]), fontsize=7)
    ax.axhline(0, color="gray", lw=0.5)
    ax.set(
        xlabel=f"stereotype label towards '{a}' (published)",
        ylabel=f"P({a}) - P({b}), next token",
        title=f"Held-out occupation prompts ({metrics['occupations']} occupations)",
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def comparison_heatmap(
    labels: list[str],
    panels: dict[str, tuple[list[list[float | None]], float]],
    path: str | Path,
) -> None:
    """Annotated heatmaps side by side: per panel title a square matrix over ``labels`` (None is
    drawn blank) and the lower end of its colour scale (0 for shares, -1 for cosines; the upper
    end is 1), so figures of different runs share one scale."""
    size = max(3.5, 0.6 * len(labels) + 2.0)
    fig, axes = plt.subplots(1, len(panels), figsize=(size * len(panels), size), squeeze=False)
    for ax, (title, (matrix, vmin)) in zip(axes[0], panels.items(), strict=True):
        values = np.array(
            [[np.nan if v is None else v for v in row] for row in matrix], dtype=float
        ).reshape(len(labels), len(labels))
        cmap = "viridis" if vmin >= 0 else "coolwarm"
        im = ax.imshow(values, vmin=vmin, vmax=1.0, cmap=cmap)
        ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        for i in range(len(labels)):
            for j in range(len(labels)):
                v = values[i, j]
                if np.isfinite(v):  # white on the dark ends of the colour map
                    dark = (v - vmin) / (1 - vmin) < 0.6 if vmin >= 0 else abs(v) > 0.6
                    color = "white" if dark else "black"
                    ax.text(j, i, f"{v:.3f}", ha="center", va="center", fontsize=7, color=color)
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    _save(fig, path)
