"""Apply a selected (f, η) to the base model and save a plain Hugging Face checkpoint (spec §8).

The rewrite uses exactly the edit the decoder grid measured (``WeightEditor``): θ' = θ + η·dec(f) on
θ's kept coordinates. The result is saved with ``save_pretrained`` together with its tokenizer and a
model card, so ``AutoModelForCausalLM.from_pretrained(folder)`` loads it with no GRADIEND code.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gradiend_core.errors import GradiendError
from gradiend_core.evaluate import WeightEditor, update_direction
from gradiend_core.io import atomic_dir, write_json
from gradiend_core.model import Gradiend
from gradiend_core.modeling import BaseModel, ParamSpace, save_tokenizer


def selection_for(decoder_metrics: dict, target_class: str, direction: str) -> dict:
    key = target_class if direction == "strengthen" else f"{target_class}_weaken"
    chosen = decoder_metrics.get("selection", {}).get(key)
    if chosen is None:
        raise GradiendError(
            f"metrics/evaluate_decoder.json: the decoder grid has no point to {direction} {target_class!r} (empty grid for that feature factor); "
            f"include both +1 and -1 in evaluate_decoder.feature_factors and rerun dvc repro."
        )
    return chosen


def model_card(base_source: str, chosen: dict, context: dict, metrics: dict) -> str:
    lines = [
        "---", "library_name: transformers", "tags: [gradiend, model-editing]", "---", "",
        f"# {context['classes'][0]} / {context['classes'][1]} rewrite of {base_source}", "",
        f"This checkpoint is `{base_source}` with its weights edited by a GRADIEND to **{chosen['direction']}** the class `{chosen['class']}`:",
        f"θ' = θ + η·dec(f) with feature factor f = {chosen['feature_factor']:+g} and learning rate η = {chosen['learning_rate']:g}.", "",
        f"GRADIEND objective `{context['objective']}`, source `{context['source']}`, target `{context['target']}`.", "",
        "| measure | before | after |", "|---|---|---|",
        f"| P({chosen['class']}) on {chosen['rows_of_class']} test rows | {metrics['target_probability_before']:.4f} | {metrics['target_probability_after']:.4f} |",
        f"| language-modelling score (LMS) | {metrics['lms_before']:.4f} | {metrics['lms_after']:.4f} |", "",
        "Made by the gradiend-dvc pipeline (`dvc repro`); parameters are in its params.yaml and dvc.lock.", "",
    ]
    return "\n".join(lines)


def write_rewritten_checkpoint(base: BaseModel, gradiend: Gradiend, space: ParamSpace, chosen: dict, out_dir: str | Path, context: dict,
                               base_source: str, measure_saved: Callable[[Path], dict]) -> dict:
    """Edit, save, reload-and-measure the saved files, then add the card; the folder appears only when all succeeded."""
    editor = WeightEditor(base.model, space)
    with atomic_dir(out_dir) as tmp:
        editor.apply(chosen["learning_rate"] * update_direction(gradiend, chosen["feature_factor"]))
        try:
            base.model.save_pretrained(tmp)
            save_tokenizer(base.tokenizer, tmp)
        finally:
            editor.restore()
        metrics = measure_saved(tmp)
        (tmp / "README.md").write_text(model_card(base_source, chosen, context, metrics), encoding="utf-8")
        write_json(tmp / "gradiend_rewrite.json", {"selection": chosen, "context": context})
    return metrics
