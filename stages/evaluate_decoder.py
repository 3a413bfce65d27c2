"""Stage evaluate_decoder@<pair>: grid of feature factor x learning rate, LMS-constrained selection,
for one pair's selected GRADIEND."""

import logging

from gradiend_core.base_model import open_base
from gradiend_core.data import load_examples, load_neutral
from gradiend_core.decoder_eval import (
    checked_reference,
    decoder_grid,
    decoder_inputs,
    grid_table,
    load_decoder_reference,
    select,
)
from gradiend_core.feature import ClassPair, feature_for_pair
from gradiend_core.gradiend import load_gradiend
from gradiend_core.io import write_csv, write_json
from gradiend_core.params import load_params
from gradiend_core.plots import decoder_heatmap, probability_shift
from gradiend_core.runtime import run_stage
from gradiend_core.workspace import (
    EXAMPLES,
    NEUTRAL,
    decoder_base_file,
    pair_metrics,
    pair_plots,
    selected_dir,
)
from stages import stage_args

LOG = logging.getLogger("stages.evaluate_decoder")


def main() -> None:
    name = stage_args(__doc__).pair
    params = load_params()
    settings, feature = params.evaluate_decoder, feature_for_pair(params.feature, name)
    max_length = params.gradient.max_length
    gradiend, space, context = load_gradiend(selected_dir(name))
    base = open_base(params)
    gradiend.to(base.device)
    examples, neutral = load_examples(EXAMPLES, feature.mask), load_neutral(NEUTRAL)
    inputs = decoder_inputs(base, examples, neutral, feature, settings, max_length)
    rows, probe, lms, lms_set = inputs.rows, inputs.probe, inputs.lms, inputs.lms_set
    classes = ClassPair.of_feature(feature).classes
    # bracket: the balance goal's point is searched only when the rewrite balances (§7.3)
    balance = params.rewrite.direction == "balance" or settings.search != "bracket"
    # the base point and the lower blocks' output, made once by stage decoder_base
    where = decoder_base_file(name)
    reference = checked_reference(
        load_decoder_reference(where, base.device), probe, lms_set, settings.batch_size, str(where)
    )
    base_point, points = decoder_grid(
        base, gradiend, space, probe, lms_set, settings, balance=balance, reference=reference
    )
    selection = select(points, base_point, context, settings.lms_ratio, balance=balance)
    metrics = {
        "base": base_point,
        "selection": selection,
        "grid_points": len(points),
        "test_rows": len(rows),
        "lms_texts": len(lms_set.sequences),
        "lms_text": lms.kind,  # the threshold is the param evaluate_decoder.lms_ratio (60 values)
    }
    write_json(pair_metrics("evaluate_decoder", name), metrics)
    table = grid_table(points, base_point, context.pair)
    out = pair_plots("evaluate_decoder", name)
    write_csv(out / "grid.csv", table)
    decoder_heatmap(table, classes, out / "heatmap.png")
    probability_shift(table, base_point, classes, selection, out / "probability_shift.png")
    for key, chosen in selection.items():
        if chosen and key != "balance":
            LOG.info(
                "%s: %.4f -> %.4f at f=%+g, lr=%g (LMS ratio %.4f, constraint met: %s)",
                key,
                chosen["base_value"],
                chosen["value"],
                chosen["feature_factor"],
                chosen["learning_rate"],
                chosen["lms_ratio"],
                chosen["constraint_met"],
            )
    chosen = selection["balance"]
    if chosen:
        LOG.info(
            "balance: gap %.4f -> %.4f at f=%+g, lr=%g (constraint met: %s)",
            base_point["balance_gap"],
            chosen["value"],
            chosen["feature_factor"],
            chosen["learning_rate"],
            chosen["constraint_met"],
        )


if __name__ == "__main__":
    run_stage("evaluate_decoder", main)
