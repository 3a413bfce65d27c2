"""Apply a selected (f, η) to the base model and save a plain Hugging Face checkpoint
(docs/method.md §8).

The rewrite uses exactly the edit the decoder grid measured (``WeightEditor``): θ' = θ + η·dec(f)
on θ's kept coordinates. The result is saved with ``save_pretrained`` together with its tokenizer
and a model card, so ``AutoModelForCausalLM.from_pretrained(folder)`` loads it with no GRADIEND
code. The reported metrics are those of the saved files, reloaded: when the reloaded model's
weights equal the measured edit's bit for bit, the grid's measurement of that point is theirs
(``grid_measurement``); otherwise the reloaded model is measured.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from gradiend_core.base_model import BaseModel, ParamSpace, load_base_model, save_tokenizer
from gradiend_core.decoder_eval import LmsSet, ProbeSet, measure
from gradiend_core.errors import GradiendError
from gradiend_core.gradiend import Gradiend, GradiendContext
from gradiend_core.io import atomic_dir, write_json
from gradiend_core.weight_edit import WeightEditor

LOG = logging.getLogger(__name__)


def selection_for(
    decoder_metrics: dict,
    target_class: str,
    direction: str,
    where: str = "metrics/evaluate_decoder.json",
) -> dict:
    """The decoder grid's choice for (``target_class``, ``direction``) from ``decoder_metrics``
    (read from ``where``, which errors name).

    ``strengthen`` reads the key ``<target_class>``, ``weaken`` ``<target_class>_weaken`` and
    ``balance`` the key ``balance``, which ignores ``target_class`` (balancing concerns both
    classes; the param stays required so that switching the direction is a one-key change).
    """
    if direction == "balance":
        chosen = decoder_metrics.get("selection", {}).get("balance")
        if chosen is None:
            raise GradiendError(
                f"{where}: the decoder grid has no 'balance' choice (evaluate_decoder ran for"
                " another rewrite.direction, an older version, or an empty grid); rerun"
                " 'dvc repro evaluate_decoder' with rewrite.direction = balance."
            )
        return chosen
    key = target_class if direction == "strengthen" else f"{target_class}_weaken"
    chosen = decoder_metrics.get("selection", {}).get(key)
    if chosen is None:
        raise GradiendError(
            f"{where}: the decoder grid has no point to {direction} {target_class!r} (empty grid"
            " for that feature factor); include both +1 and -1 in"
            " evaluate_decoder.feature_factors and rerun dvc repro."
        )
    return chosen


def model_card(base_source: str, chosen: dict, context: dict, metrics: dict) -> str:
    """README.md of the rewritten checkpoint: what was edited and what it changed."""
    a, b = context["classes"]
    if metrics["direction"] == "balance":
        goal = f"**balance** the classes `{a}` and `{b}`"
        p_row = (
            f"| mean \\|P({a}) - P({b})\\| / (P({a}) + P({b})) on all test rows |"
            f" {metrics['balance_gap_before']:.4f} | {metrics['balance_gap_after']:.4f} |"
        )
    else:
        goal = f"**{chosen['direction']}** the class `{chosen['class']}`"
        p_row = (
            f"| P({chosen['class']}) on {chosen['rows_of_class']} test rows |"
            f" {metrics['target_probability_before']:.4f} |"
            f" {metrics['target_probability_after']:.4f} |"
        )
    lms_row = (
        f"| language-modelling score (LMS) | {metrics['lms_before']:.4f} "
        f"| {metrics['lms_after']:.4f} |"
    )
    lines = [
        "---",
        "library_name: transformers",
        "tags: [gradiend, model-editing]",
        "---",
        "",
        f"# {a} / {b} rewrite of {base_source}",
        "",
        f"This checkpoint is `{base_source}` with its weights edited by a GRADIEND to {goal}:",
        (
            f"θ' = θ + η·dec(f) with feature factor f = {chosen['feature_factor']:+g} and learning"
            f" rate η = {chosen['learning_rate']:g}."
        ),
        "",
        (
            f"GRADIEND objective `{context['objective']}`, source `{context['source']}`, "
            f"target `{context['target']}`."
        ),
        "",
        "| measure | before | after |",
        "|---|---|---|",
        p_row,
        lms_row,
        "",
        (
            "Made by the gradiend-dvc pipeline (`dvc repro`); parameters are in its params.yaml and"
            " dvc.lock."
        ),
        "",
    ]
    return "\n".join(lines)


def grid_measurement(table, chosen: dict, classes: list[str]) -> dict | None:
    """The decoder grid's measurement of the chosen (f, η): ``probs_by_dataset``, ``balance_gap``
    and ``lms`` read from its table (``plots/evaluate_decoder/<pair>/grid.csv``, ``grid_table``;
    CSV floats read back exactly), or None when the table has no single row for that point."""
    at = table[
        (table["feature_factor"] == chosen["feature_factor"])
        & (table["learning_rate"] == chosen["learning_rate"])
    ]
    columns = ["lms", "balance_gap", *(f"p_{c}_on_{d}" for c in classes for d in classes)]
    if len(at) != 1 or not set(columns) <= set(at.columns):
        return None
    row = at.iloc[0]
    return {
        "probs_by_dataset": {d: {c: float(row[f"p_{c}_on_{d}"]) for c in classes} for d in classes},
        "balance_gap": float(row["balance_gap"]),
        "lms": float(row["lms"]),
    }


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Both models hold the same tensors (names, dtypes, values) bit for bit."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(
        sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k].to(sa[k].device)) for k in sa
    )


def rewrite_metrics(before: dict, after: dict, chosen: dict, settings, lms_ratio: float) -> dict:
    """Before/after of the goal's measure, both classes' probabilities and the LMS
    (``metrics/rewrite.json``).

    ``before``/``after`` are ``decoder_eval.measure`` results of the base and the saved model.
    Always reported: ``probs_by_dataset_before/after`` (mean P(C) on each class's rows) and
    ``balance_gap_before/after`` (mean over all test rows of |P(A) - P(B)| / (P(A) + P(B))).
    For ``strengthen``/``weaken``, ``target_probability_before/after`` is P(target) on the
    selected rows and ``moved_in_requested_direction`` says it rose/fell. For ``balance``,
    ``target_class``, ``rows_of_class`` and ``target_probability_*`` are null (no single target)
    and ``moved_in_requested_direction`` says the balance gap decreased.
    """
    direction = settings.direction
    if direction == "balance":
        target = dataset = p_before = p_after = None
        moved = after["balance_gap"] < before["balance_gap"]
    else:
        dataset, target = chosen["rows_of_class"], settings.target_class
        p_before = before["probs_by_dataset"][dataset][target]
        p_after = after["probs_by_dataset"][dataset][target]
        moved = p_after > p_before if direction == "strengthen" else p_after < p_before
    return {
        "target_class": target,
        "direction": direction,
        "rows_of_class": dataset,
        "feature_factor": chosen["feature_factor"],
        "learning_rate": chosen["learning_rate"],
        "target_probability_before": p_before,
        "target_probability_after": p_after,
        "probs_by_dataset_before": before["probs_by_dataset"],
        "probs_by_dataset_after": after["probs_by_dataset"],
        "balance_gap_before": before["balance_gap"],
        "balance_gap_after": after["balance_gap"],
        "lms_before": before["lms"],
        "lms_after": after["lms"],
        "lms_ratio": after["lms"] / before["lms"],
        "lms_constraint_met": after["lms"] >= lms_ratio * before["lms"],
        "moved_in_requested_direction": bool(moved),
    }


def rewrite_summary(metrics: dict) -> str:
    """One log line of ``rewrite_metrics``: the goal's measure before -> after and the LMS ratio."""
    if metrics["direction"] == "balance":
        moved = (
            f"balance gap {metrics['balance_gap_before']:.4f} -> {metrics['balance_gap_after']:.4f}"
        )
    else:
        moved = (
            f"P {metrics['target_probability_before']:.4f} -> "
            f"{metrics['target_probability_after']:.4f}"
        )
    goal = metrics["target_class"] or "both classes"
    return f"rewrite ({metrics['direction']} {goal}): {moved}, LMS ratio {metrics['lms_ratio']:.4f}"


def rewrite_checkpoint(
    base: BaseModel,
    gradiend: Gradiend,
    space: ParamSpace,
    context: GradiendContext,
    chosen: dict,
    probe: ProbeSet,
    lms_set: LmsSet,
    *,
    settings,
    decoder,
    runtime,
    base_source: str,
    out_dir: str | Path,
    before: dict | None = None,
    measured: dict | None = None,
) -> dict:
    """Edit θ by the chosen point, save the checkpoint, reload it and measure (§8).

    Args:
        settings: ``rewrite`` params (``target_class``, ``direction``; ``balance`` ignores the
            class).
        decoder: ``evaluate_decoder`` params (``batch_size`` and the ``lms_ratio`` constraint the
            saved model is checked against).
        runtime: ``runtime`` params (device and dtype of the reloaded checkpoint).
        before: the unedited base model's ``measure`` on the same probe rows and LMS text, when
            already known: the decoder grid's base point (``metrics/evaluate_decoder/<pair>.json``
            ``base``, the same measurement of the same inputs; its JSON floats read back exactly).
            None measures it here.
        measured: the grid's measurement of the chosen point (``grid_measurement``), taken as the
            saved model's when the reloaded checkpoint's weights equal the edited model's bit for
            bit (the same weights on the same inputs give the same numbers); None, or weights that
            differ, measure the reloaded checkpoint.
    The folder appears only when saving, measuring and the model card all succeeded.
    """
    if before is None:
        before = measure(base, probe, lms_set, decoder.batch_size)
    editor = WeightEditor(base.model, space)
    with atomic_dir(out_dir) as tmp:
        editor.apply_gradiend(gradiend, chosen["feature_factor"], chosen["learning_rate"])
        try:
            base.model.save_pretrained(tmp)
            save_tokenizer(base.tokenizer, tmp)
            saved = load_base_model(tmp, runtime.device, runtime.dtype)
            exact = measured is not None and same_weights(saved.model, base.model)
        finally:
            editor.restore()
        if exact:
            after = measured
        else:
            if measured is not None:
                LOG.warning("the reloaded checkpoint differs from the measured edit; measuring it")
            after = measure(saved, probe, lms_set, decoder.batch_size)
        metrics = rewrite_metrics(before, after, chosen, settings, decoder.lms_ratio)
        card = model_card(base_source, chosen, context.__dict__, metrics)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        write_json(
            tmp / "gradiend_rewrite.json", {"selection": chosen, "context": context.__dict__}
        )
    return metrics
