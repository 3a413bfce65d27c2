"""Encoder metrics, in-place weight edits, class probabilities, LMS and the selection policy (spec
§6-§7)."""

from __future__ import annotations

import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import gpt2_pieces
from test_gradients import MASK, full_space, masked_lm_pieces, word_ids
from test_row_gradients import gemma_base
from torch import nn

from gradiend_core.block_cache import LowerBlockCache, first_edited_block
from gradiend_core.decoder_eval import (
    balance_gap,
    bracket_boundary,
    build_lms_set,
    build_probe_set,
    checked_reference,
    class_probabilities,
    decoder_grid,
    decoder_reference,
    language_modelling_score,
    load_decoder_reference,
    measure,
    probs_by_dataset,
    refine_between,
    save_decoder_reference,
    select,
    select_balance,
)
from gradiend_core.encoder_eval import encoder_metrics
from gradiend_core.errors import GradiendError
from gradiend_core.gradiend import Gradiend, GradiendContext
from gradiend_core.rewrite import model_card, rewrite_metrics, rewrite_summary, selection_for
from gradiend_core.tokens import class_token_ids
from gradiend_core.weight_edit import WeightEditor, update_direction

REPO = Path(__file__).resolve().parents[1]
TARGETS = {"he": ["he"], "she": ["she"]}
CLASSES = ["he", "she"]
NEUTRAL = [
    "The weather was cold and windy all day long in the small town .",
    "We walked to the station .",
    "The river flooded the fields after three days of heavy rain .",
    "My cat sleeps on the warm sofa .",
]
PROBE_ROWS = pd.DataFrame(
    {
        "masked": [
            "My brother said that [MASK] was very tired after the long day at work .",
            "The nurse wrote that [MASK] had found the keys .",
            "My friend said [MASK] was tired .",
            "The old man believed that [MASK] would come to the party later tonight .",
        ],
        "factual_class": ["he", "she", "she", "he"],
    }
)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


# ---- weight editor -------------------------------------------------------------------------------


def test_weight_editor_sets_base_plus_delta_on_kept_coordinates_and_restores_bit_exactly(
    causal_base,
):
    model = causal_base.model
    space = full_space(causal_base)
    kept = torch.randperm(space.full_size, generator=torch.Generator().manual_seed(1))[:500]
    pruned = space.with_kept(kept)
    before = snapshot(model)
    theta = torch.cat([before[n].reshape(-1) for n in space.names])
    delta = torch.randn(pruned.size, generator=torch.Generator().manual_seed(2)) * 1e-3
    editor = WeightEditor(model, pruned)
    editor.apply(delta)
    expected = theta.clone()
    expected[pruned.kept] = theta[pruned.kept] + delta
    now = snapshot(model)
    assert torch.equal(torch.cat([now[n].reshape(-1) for n in space.names]), expected)
    for name in before:  # parameters outside θ are untouched
        if name not in space.names:
            assert torch.equal(now[name], before[name]), name
    # A second apply starts from the originals, not from the edited weights.
    editor.apply(2 * delta)
    expected[pruned.kept] = theta[pruned.kept] + 2 * delta
    assert torch.equal(
        torch.cat(
            [p.detach().reshape(-1) for n, p in model.named_parameters() if n in space.names]
        ),
        expected,
    )
    editor.restore()
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name]), name


def test_weight_editor_on_the_full_space(causal_base):
    model = causal_base.model
    space = full_space(causal_base, first_layer=1)
    before = snapshot(model)
    delta = torch.arange(space.full_size, dtype=torch.float32) * 1e-6
    editor = WeightEditor(model, space)
    editor.apply(delta)
    at = 0
    for name, n in zip(space.names, space.numels, strict=True):
        assert torch.equal(
            dict(model.named_parameters())[name].detach().reshape(-1),
            before[name].reshape(-1) + delta[at : at + n],
        ), name
        at += n
    editor.restore()
    assert all(torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())


def test_update_direction_is_decoder_of_the_feature_factor():
    model = Gradiend(6, 1)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        model.decoder_weight.copy_(torch.randn(6, 1, generator=gen))
        model.decoder_bias.copy_(torch.randn(6, generator=gen))
    for f in (-1.0, 1.0, 0.5):
        torch.testing.assert_close(
            update_direction(model, f), model.decoder_weight[:, 0] * f + model.decoder_bias
        )


# ---- class probabilities -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "mark"), [("causal_base", "Ġ"), ("bert_base", ""), ("roberta_base", "Ġ")]
)
def test_class_token_ids_are_the_in_vocabulary_casings(request, fixture, mark):
    """The entry of the word after a space: 'Ġhe' for the byte-level causal and RoBERTa fixtures
    (never their sentence-initial 'he'), the one 'he' of BERT's whitespace tokenizer."""
    base = request.getfixturevalue(fixture)
    tok = base.tokenizer
    ids = class_token_ids(tok, base.kind, TARGETS)
    # The fixture vocabularies have he, He, she, She but no upper-case forms (those map to the unk
    # token, which must not count).
    assert sorted(ids["he"]) == sorted(word_ids(tok, [mark + "he", mark + "He"]))
    assert sorted(ids["she"]) == sorted(word_ids(tok, [mark + "she", mark + "She"]))
    assert tok.unk_token_id not in ids["he"] + ids["she"]
    if mark:
        assert not set(word_ids(tok, ["he", "He", "she", "She"])) & set(ids["he"] + ids["she"])
    with pytest.raises(GradiendError, match="single-token"):
        class_token_ids(tok, base.kind, {"he": ["he"], "she": ["zyzzyva"]})


def reference_causal_probs(base, rows: pd.DataFrame) -> torch.Tensor:
    tok = base.tokenizer
    ids = {c: word_ids(tok, ["Ġ" + w, "Ġ" + w.capitalize()]) for c, [w] in TARGETS.items()}
    out = []
    for masked in rows["masked"]:
        prefix = word_ids(tok, gpt2_pieces(masked.split(MASK)[0]))
        with torch.no_grad():
            probs = base.model(input_ids=torch.tensor([prefix])).logits[0, -1].softmax(-1)
        out.append([float(probs[ids[c]].sum()) for c in CLASSES])
    return torch.tensor(out)


def reference_masked_probs(base, rows: pd.DataFrame) -> torch.Tensor:
    tok = base.tokenizer
    out = []
    for masked in rows["masked"]:
        pieces, mark = masked_lm_pieces(tok, masked)
        ids = {c: word_ids(tok, [mark + w, mark + w.capitalize()]) for c, [w] in TARGETS.items()}
        seq = [tok.cls_token_id] + word_ids(tok, pieces) + [tok.sep_token_id]
        with torch.no_grad():
            probs = (
                base.model(input_ids=torch.tensor([seq]))
                .logits[0, seq.index(tok.mask_token_id)]
                .softmax(-1)
            )
        out.append([float(probs[ids[c]].sum()) for c in CLASSES])
    return torch.tensor(out)


@pytest.mark.parametrize("batch_size", [1, 3, 4])
def test_class_probabilities_causal_equal_unpadded_per_row_softmax(causal_base, batch_size):
    probe = build_probe_set(causal_base, PROBE_ROWS, CLASSES, TARGETS, MASK, max_length=32)
    got = class_probabilities(causal_base, probe, batch_size)
    expected = reference_causal_probs(causal_base, PROBE_ROWS)
    assert got.shape == (4, 2)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)
    by = probs_by_dataset(probe, got)
    assert by["he"]["she"] == pytest.approx(float(expected[[0, 3], 1].mean()), abs=1e-5)
    assert by["she"]["he"] == pytest.approx(float(expected[[1, 2], 0].mean()), abs=1e-5)


@pytest.mark.parametrize("fixture", ["bert_base", "roberta_base"])
def test_class_probabilities_masked_equal_unpadded_per_row_softmax(request, fixture):
    base = request.getfixturevalue(fixture)
    probe = build_probe_set(base, PROBE_ROWS, CLASSES, TARGETS, MASK, max_length=32)
    torch.testing.assert_close(
        class_probabilities(base, probe, 4),
        reference_masked_probs(base, PROBE_ROWS),
        atol=1e-5,
        rtol=1e-4,
    )
    with pytest.raises(GradiendError, match="truncation"):
        build_probe_set(base, PROBE_ROWS, CLASSES, TARGETS, MASK, max_length=5)


# ---- language-modelling score --------------------------------------------------------------------


def test_causal_lms_is_one_over_one_plus_shifted_mean_nll(causal_base):
    tok = causal_base.tokenizer
    total, count, unshifted = 0.0, 0, 0.0
    for text in NEUTRAL:
        ids = torch.tensor(word_ids(tok, gpt2_pieces(text)))
        with torch.no_grad():
            logits = causal_base.model(input_ids=ids[None]).logits[0]
        total += float(
            nn.functional.cross_entropy(logits[:-1], ids[1:], reduction="sum")
        )  # logits[t] predicts ids[t+1]
        unshifted += float(nn.functional.cross_entropy(logits, ids, reduction="sum"))
        count += len(ids) - 1
    lms_set = build_lms_set(causal_base, NEUTRAL, max_length=64)
    for batch_size in (1, 3):
        got = language_modelling_score(causal_base, lms_set, batch_size)
        assert got["tokens"] == count
        assert got["mean_nll"] == pytest.approx(total / count, rel=1e-5)
        assert got["lms"] == pytest.approx(1 / (1 + total / count), rel=1e-5)
    assert (
        abs(1 / (1 + unshifted / (count + len(NEUTRAL))) - got["lms"]) > 1e-3
    )  # the reference's unshifted bug differs


def test_masked_lms_is_accuracy_on_fixed_positions(bert_base):
    tok = bert_base.tokenizer
    lms_set = build_lms_set(bert_base, NEUTRAL, max_length=64)
    again = build_lms_set(bert_base, NEUTRAL, max_length=64)
    assert lms_set.masked_positions == again.masked_positions
    rng = random.Random(42)
    correct = count = 0
    for text, positions in zip(NEUTRAL, lms_set.masked_positions, strict=True):
        seq = [tok.cls_token_id] + word_ids(tok, text.split()) + [tok.sep_token_id]
        candidates = list(range(1, len(seq) - 1))
        assert positions == sorted(rng.sample(candidates, max(1, int(0.15 * len(candidates)))))
        masked = list(seq)
        for p in positions:
            masked[p] = tok.mask_token_id
        with torch.no_grad():
            pred = bert_base.model(input_ids=torch.tensor([masked])).logits[0].argmax(-1)
        correct += sum(int(pred[p] == seq[p]) for p in positions)
        count += len(positions)
    got = language_modelling_score(bert_base, lms_set, batch_size=3)
    assert got["tokens"] == count and got["lms"] == pytest.approx(correct / count)


# ---- decoder grid --------------------------------------------------------------------------------


def grid_settings(factors, rates, search="grid", lms_ratio=0.99, refine_steps=0) -> SimpleNamespace:
    return SimpleNamespace(
        feature_factors=factors,
        learning_rates=rates,
        batch_size=4,
        lms_ratio=lms_ratio,
        search=search,
        refine_steps=refine_steps,
    )


def test_decoder_grid_measures_edited_models_and_restores(causal_base):
    space = full_space(causal_base)
    pruned = space.with_kept(
        torch.randperm(space.full_size, generator=torch.Generator().manual_seed(3))[:2000]
    )
    gradiend = Gradiend.initialised(pruned.size, seed=0)
    with torch.no_grad():
        gradiend.decoder_weight.mul_(50.0)
    probe = build_probe_set(causal_base, PROBE_ROWS, CLASSES, TARGETS, MASK, max_length=32)
    lms_set = build_lms_set(causal_base, NEUTRAL, max_length=64)
    before = snapshot(causal_base.model)
    base_point, points = decoder_grid(
        causal_base,
        gradiend,
        pruned,
        probe,
        lms_set,
        grid_settings([1.0, -1.0], [10.0, 1.0], search="grid"),
    )
    assert [(p["feature_factor"], p["learning_rate"]) for p in points] == [
        (-1.0, 1.0),
        (-1.0, 10.0),
        (1.0, 1.0),
        (1.0, 10.0),
    ]
    assert all(torch.equal(p.detach(), before[n]) for n, p in causal_base.model.named_parameters())
    assert base_point == measure(causal_base, probe, lms_set, 4)
    # One point recomputed by editing the weights by hand: θ + η·(W_d f + b_d) on the kept
    # coordinates.
    named = dict(causal_base.model.named_parameters())
    direction = (gradiend.decoder_weight[:, 0] * 1.0 + gradiend.decoder_bias).detach()
    with torch.no_grad():
        at = 0
        for name, idx in zip(pruned.names, pruned.local_indices(), strict=True):
            named[name].view(-1)[idx] += 10.0 * direction[at : at + idx.numel()]
            at += idx.numel()
        expected = measure(causal_base, probe, lms_set, 4)
    point = points[3]
    assert point["lms"] == pytest.approx(expected["lms"], rel=1e-5)
    assert point["lms"] != pytest.approx(
        base_point["lms"], rel=1e-4
    )  # the edit is large enough to matter
    for d in CLASSES:
        for c in CLASSES:
            assert point["probs_by_dataset"][d][c] == pytest.approx(
                expected["probs_by_dataset"][d][c], abs=1e-5
            )


# ---- selection policy ---------------------------------------------------------------------------


def point(
    f: float,
    lr: float,
    lms: float,
    p_he_on_she: float,
    p_she_on_he: float,
    p_he_on_he: float,
    p_she_on_she: float,
    gap: float = 0.5,
) -> dict:
    return {
        "feature_factor": f,
        "learning_rate": lr,
        "lms": lms,
        "balance_gap": gap,
        "probs_by_dataset": {
            "he": {"he": p_he_on_he, "she": p_she_on_he},
            "she": {"he": p_he_on_she, "she": p_she_on_she},
        },
    }


BASE = {
    "lms": 0.5,
    "balance_gap": 0.6,
    "probs_by_dataset": {"he": {"he": 0.4, "she": 0.1}, "she": {"he": 0.2, "she": 0.3}},
}
POINTS = [
    point(+1.0, 0.1, 0.500, 0.30, 0.05, 0.50, 0.25),
    point(+1.0, 1.0, 0.496, 0.60, 0.02, 0.70, 0.10),
    point(
        +1.0, 10.0, 0.400, 0.90, 0.01, 0.95, 0.01
    ),  # best P(he) but fails the LMS constraint (0.4 < 0.99 * 0.5)
    point(-1.0, 10.0, 0.100, 0.01, 0.90, 0.02, 0.95),
    point(-1.0, 0.1, 0.490, 0.10, 0.20, 0.30, 0.40),  # 0.49 < 0.495: no -1 point passes
    point(-1.0, 1.0, 0.300, 0.05, 0.50, 0.10, 0.60),
]


def test_select_strengthen_and_weaken_with_source_alternative():
    out = select(
        POINTS,
        BASE,
        GradiendContext(CLASSES, "alternative", "diff", "clm_next_token", "m"),
        lms_ratio=0.99,
    )
    assert set(out) == {"he", "he_weaken", "she", "she_weaken", "balance"}
    he = out["he"]  # factor +1, P(he) on she rows, among LMS-passing points: lr 1.0
    assert (he["feature_factor"], he["learning_rate"], he["value"], he["constraint_met"]) == (
        1.0,
        1.0,
        0.60,
        True,
    )
    assert (
        he["base_value"] == 0.2 and he["rows_of_class"] == "she" and he["direction"] == "strengthen"
    )
    assert he["lms"] == 0.496 and he["lms_ratio"] == pytest.approx(0.496 / 0.5)
    she = out["she"]  # factor -1: nothing passes -> smallest learning rate, flagged
    assert (she["feature_factor"], she["learning_rate"], she["value"], she["constraint_met"]) == (
        -1.0,
        0.1,
        0.20,
        False,
    )
    assert she["base_value"] == 0.1
    he_w = out["he_weaken"]  # the other class's factor (-1), 1 - P(he) on he rows; nothing passes
    assert (he_w["feature_factor"], he_w["learning_rate"], he_w["constraint_met"]) == (
        -1.0,
        0.1,
        False,
    )
    assert he_w["value"] == pytest.approx(1 - 0.30) and he_w["base_value"] == pytest.approx(1 - 0.4)
    assert he_w["rows_of_class"] == "he" and he_w["direction"] == "weaken"
    she_w = out["she_weaken"]  # factor +1, 1 - P(she) on she rows: lr 1.0 (0.9) beats lr 0.1 (0.75)
    assert (she_w["feature_factor"], she_w["learning_rate"], she_w["constraint_met"]) == (
        1.0,
        1.0,
        True,
    )
    assert she_w["value"] == pytest.approx(0.90)


def test_select_factor_follows_the_source_and_ties_prefer_the_smaller_rate():
    out = select(
        POINTS,
        BASE,
        GradiendContext(CLASSES, "diff", "diff", "clm_next_token", "m"),
        lms_ratio=0.99,
    )
    assert out["he"]["feature_factor"] == -1.0 and out["she"]["feature_factor"] == 1.0
    assert (
        out["she"]["learning_rate"] == 0.1 and out["she"]["value"] == 0.05
    )  # P(she) on he rows under +1
    tied = [
        point(1.0, 2.0, 0.5, 0.7, 0, 0, 0),
        point(1.0, 0.5, 0.5, 0.7, 0, 0, 0),
        point(1.0, 5.0, 0.5, 0.6, 0, 0, 0),
    ]
    out = select(
        tied,
        BASE,
        GradiendContext(CLASSES, "alternative", "diff", "clm_next_token", "m"),
        lms_ratio=0.99,
    )
    assert out["he"]["learning_rate"] == 0.5
    assert out["she"] is None and out["he_weaken"] is None  # no point with factor -1
    loose = select(
        POINTS,
        BASE,
        GradiendContext(CLASSES, "alternative", "diff", "clm_next_token", "m"),
        lms_ratio=0.1,
    )
    assert loose["he"]["learning_rate"] == 10.0 and loose["he"]["constraint_met"] is True


# ---- balance -------------------------------------------------------------------------------------


def test_balance_gap_is_the_mean_relative_gap_per_row():
    probs = torch.tensor(
        [
            [0.3, 0.1],  # |0.3 - 0.1| / 0.4 = 0.5
            [0.1, 0.1],  # 0
            [0.0, 0.0],  # no mass for either class: fully one-sided, 1
            [0.2, 0.6],  # 0.4 / 0.8 = 0.5
            [float("nan"), 0.1],  # not finite: 1
        ]
    )
    assert balance_gap(probs) == pytest.approx((0.5 + 0 + 1 + 0.5 + 1) / 5)
    # Per row, not per class mean: two rows one-sided in opposite directions are not balanced.
    assert balance_gap(torch.tensor([[0.4, 0.0], [0.0, 0.4]])) == 1.0


def test_measure_reports_the_balance_gap_of_its_rows(causal_base):
    probe = build_probe_set(causal_base, PROBE_ROWS, CLASSES, TARGETS, MASK, max_length=32)
    lms_set = build_lms_set(causal_base, NEUTRAL, max_length=64)
    probs = reference_causal_probs(causal_base, PROBE_ROWS).double()
    expected = float(((probs[:, 0] - probs[:, 1]).abs() / probs.sum(1)).mean())
    assert measure(causal_base, probe, lms_set, 3)["balance_gap"] == pytest.approx(
        expected, abs=1e-5
    )


# Base LMS 0.5 and lms_ratio 0.99: a point qualifies with LMS >= 0.495.
BALANCE_POINTS = [
    point(+1.0, 0.1, 0.500, 0, 0, 0, 0, gap=0.50),
    point(+1.0, 1.0, 0.496, 0, 0, 0, 0, gap=0.30),
    point(+1.0, 10.0, 0.400, 0, 0, 0, 0, gap=0.01),  # smallest gap, but fails the LMS constraint
    point(-1.0, 0.1, 0.499, 0, 0, 0, 0, gap=0.30),  # ties with (+1, 1.0): the smaller η wins
    point(-1.0, 1.0, 0.300, 0, 0, 0, 0, gap=0.05),  # fails
]


def test_select_balance_minimises_the_gap_over_both_factors_under_the_lms_constraint():
    chosen = select_balance(BALANCE_POINTS, BASE, lms_ratio=0.99)
    assert chosen == {
        "feature_factor": -1.0,
        "learning_rate": 0.1,
        "value": 0.30,
        "constraint_met": True,
    }
    loose = select_balance(BALANCE_POINTS, BASE, lms_ratio=0.5)  # 0.25: all but (-1, 1.0) pass
    assert (loose["feature_factor"], loose["learning_rate"], loose["value"]) == (1.0, 10.0, 0.01)
    # select() reports the same choice under the key 'balance', whatever the source.
    for source in ("alternative", "diff"):
        context = GradiendContext(CLASSES, source, "diff", "clm_next_token", "m")
        assert select(BALANCE_POINTS, BASE, context, lms_ratio=0.99)["balance"] == chosen


def test_select_balance_ties_and_fallback():
    tied = [
        point(+1.0, 0.5, 0.5, 0, 0, 0, 0, gap=0.2),
        point(-1.0, 0.5, 0.5, 0, 0, 0, 0, gap=0.2),
        point(-1.0, 2.0, 0.5, 0, 0, 0, 0, gap=0.2),
    ]
    chosen = select_balance(tied, BASE, lms_ratio=0.99)  # same gap and η: the smaller f
    assert (chosen["feature_factor"], chosen["learning_rate"]) == (-1.0, 0.5)
    failing = [
        point(+1.0, 0.1, 0.3, 0, 0, 0, 0, gap=0.5),
        point(-1.0, 0.1, 0.3, 0, 0, 0, 0, gap=0.4),
        point(-1.0, 0.01, 0.1, 0, 0, 0, 0, gap=0.9),
        point(+1.0, 1.0, 0.2, 0, 0, 0, 0, gap=0.0),
    ]
    chosen = select_balance(failing, BASE, lms_ratio=0.99)  # none passes: the smallest η
    assert chosen == {
        "feature_factor": -1.0,
        "learning_rate": 0.01,
        "value": 0.9,
        "constraint_met": False,
    }
    chosen = select_balance(failing[:2], BASE, lms_ratio=0.99)  # at the smallest η, the min gap
    assert (chosen["feature_factor"], chosen["value"], chosen["constraint_met"]) == (
        -1.0,
        0.4,
        False,
    )
    assert select_balance([], BASE, lms_ratio=0.99) is None


def measured(p_he_on_he, p_she_on_he, p_he_on_she, p_she_on_she, gap, lms) -> dict:
    return {
        "probs_by_dataset": {
            "he": {"he": p_he_on_he, "she": p_she_on_he},
            "she": {"he": p_he_on_she, "she": p_she_on_she},
        },
        "balance_gap": gap,
        "lms": lms,
    }


def test_rewrite_balance_reads_the_balance_choice_and_reports_the_gap():
    decoder = {"selection": {"he": {"class": "he"}, "balance": {"feature_factor": -1.0}}}
    assert selection_for(decoder, "he", "balance") == {"feature_factor": -1.0}
    assert selection_for(decoder, "she", "balance") == {"feature_factor": -1.0}  # class ignored
    assert selection_for(decoder, "he", "strengthen") == {"class": "he"}
    with pytest.raises(GradiendError, match="'balance'.*dvc repro evaluate_decoder"):
        selection_for({"selection": {"he": {}}}, "he", "balance")
    chosen = {"feature_factor": -1.0, "learning_rate": 0.1, "value": 0.3, "constraint_met": True}
    before = measured(0.4, 0.1, 0.2, 0.3, gap=0.6, lms=0.5)
    after = measured(0.3, 0.2, 0.25, 0.25, gap=0.25, lms=0.499)
    settings = SimpleNamespace(target_class="he", direction="balance")
    m = rewrite_metrics(before, after, chosen, settings, lms_ratio=0.99)
    assert m["target_class"] is None and m["rows_of_class"] is None
    assert m["target_probability_before"] is None and m["target_probability_after"] is None
    assert (m["balance_gap_before"], m["balance_gap_after"]) == (0.6, 0.25)
    assert m["probs_by_dataset_before"] == before["probs_by_dataset"]
    assert m["probs_by_dataset_after"] == after["probs_by_dataset"]
    assert m["moved_in_requested_direction"] is True and m["lms_constraint_met"] is True
    worse = rewrite_metrics(before, {**after, "balance_gap": 0.7}, chosen, settings, 0.99)
    assert worse["moved_in_requested_direction"] is False
    assert rewrite_summary(m) == (
        "rewrite (balance both classes): balance gap 0.6000 -> 0.2500, LMS ratio 0.9980"
    )
    card = model_card("src", chosen, {"classes": ["he", "she"]} | CARD_CONTEXT, m)
    assert "**balance** the classes `he` and `she`" in card
    assert (
        "| mean \\|P(he) - P(she)\\| / (P(he) + P(she)) on all test rows | 0.6000 | 0.2500 |"
        in card
    )


CARD_CONTEXT = {"objective": "clm_next_token", "source": "alternative", "target": "diff"}


def test_rewrite_strengthen_metrics_keep_their_meaning_and_add_the_gap():
    chosen = {"rows_of_class": "she", "feature_factor": 1.0, "learning_rate": 0.1}
    before = measured(0.4, 0.1, 0.2, 0.3, gap=0.6, lms=0.5)
    after = measured(0.5, 0.05, 0.35, 0.2, gap=0.5, lms=0.49)
    for direction, target, p_before, p_after, moved in (
        ("strengthen", "he", 0.2, 0.35, True),
        ("weaken", "she", 0.3, 0.2, True),  # hypothetically on she rows
    ):
        settings = SimpleNamespace(target_class=target, direction=direction)
        m = rewrite_metrics(before, after, chosen, settings, lms_ratio=0.99)
        assert (m["target_probability_before"], m["target_probability_after"]) == (
            p_before,
            p_after,
        )
        assert m["moved_in_requested_direction"] is moved and m["target_class"] == target
        assert (m["balance_gap_before"], m["balance_gap_after"]) == (0.6, 0.5)
        assert m["lms_constraint_met"] is False  # 0.49 < 0.99 * 0.5


# ---- encoder metrics -----------------------------------------------------------------------------


def test_encoder_metrics_on_a_synthetic_frame():
    test_enc = [0.9, 0.4, 0.0, -0.7, -0.2, 0.6]
    test_lab = [1, 1, -1, -1, -1, 1]
    test_cls = ["he", "he", "she", "she", "she", "he"]
    neutral_enc = [0.1, -0.6, 0.5, 0.0]
    frame = pd.DataFrame(
        {
            "type": ["test"] * 6 + ["neutral"] * 4,
            "source_class": test_cls + ["neutral"] * 4,
            "label": test_lab + [0] * 4,
            "encoded": test_enc + neutral_enc,
            "text": [f"t{i}" for i in range(10)],
        }
    )
    m = encoder_metrics(frame, CLASSES)
    assert m["correlation"] == pytest.approx(np.corrcoef(test_enc, test_lab)[0, 1])
    assert m["accuracy"] == pytest.approx(
        5 / 6
    )  # 0.0 counts as +1 (wrong for label -1); -0.2 -> -1 is right
    all_enc, all_lab = test_enc + neutral_enc, test_lab + [0] * 4
    assert m["correlation_with_neutral"] == pytest.approx(np.corrcoef(all_enc, all_lab)[0, 1])
    # ternary: >= 0.5 -> 1, <= -0.5 -> -1, else 0: test rows right are 0.9, -0.7, 0.6; neutral right
    # are 0.1, 0.0
    assert m["accuracy_ternary_with_neutral"] == pytest.approx(5 / 10)
    assert m["mean_by_class"]["he"] == pytest.approx(np.mean([0.9, 0.4, 0.6]))
    assert m["mean_by_class"]["she"] == pytest.approx(np.mean([0.0, -0.7, -0.2]))
    assert m["neutral"]["n"] == 4
    assert m["neutral"]["mean"] == pytest.approx(np.mean(neutral_enc))
    assert m["neutral"]["abs_mean"] == pytest.approx(np.mean(np.abs(neutral_enc)))
    assert m["neutral"]["std"] == pytest.approx(np.std(neutral_enc))
    assert m["n_test_rows"] == 6


def test_encoder_metrics_needs_both_labels_and_handles_no_neutral_rows():
    frame = pd.DataFrame(
        {
            "type": ["test"] * 3,
            "source_class": ["he"] * 3,
            "label": [1] * 3,
            "encoded": [0.1, 0.2, 0.3],
            "text": ["a", "b", "c"],
        }
    )
    with pytest.raises(GradiendError, match="both classes"):
        encoder_metrics(frame, CLASSES)
    frame = pd.DataFrame(
        {
            "type": ["test"] * 2,
            "source_class": ["he", "she"],
            "label": [1, -1],
            "encoded": [0.5, -0.5],
            "text": ["a", "b"],
        }
    )
    m = encoder_metrics(frame, CLASSES)
    assert m["correlation"] == pytest.approx(1.0) and m["neutral"] == {
        "n": 0,
        "mean": None,
        "abs_mean": None,
        "std": None,
    }


def upper_block_setup(causal_base):
    """θ = the last block only, a strong random decoder: edits change the top block alone."""
    space = full_space(causal_base, first_layer=-1)
    gradiend = Gradiend.initialised(space.size, seed=1)
    with torch.no_grad():
        gradiend.decoder_weight.mul_(30.0)
    probe = build_probe_set(causal_base, PROBE_ROWS, CLASSES, TARGETS, MASK, max_length=32)
    lms_set = build_lms_set(causal_base, NEUTRAL, max_length=64)
    return space, gradiend, probe, lms_set


def test_lower_block_reuse_is_exact_and_used(causal_base):
    """Grid points measured with the recorded lower-block states equal full passes bit for bit."""
    space, gradiend, probe, lms_set = upper_block_setup(causal_base)
    n_blocks = causal_base.model.config.num_hidden_layers
    assert first_edited_block(space) == n_blocks - 1 > 0
    cache = LowerBlockCache(causal_base.model, first_edited_block(space))
    assert measure(causal_base, probe, lms_set, 4, cache) == measure(causal_base, probe, lms_set, 4)
    assert cache.enabled and set(cache.states) == {("probe", 0), ("lms", 0)}
    editor = WeightEditor(causal_base.model, space)
    for f, lr in ((1.0, 3.0), (-1.0, 10.0)):
        editor.apply_gradiend(gradiend, f, lr)
        try:
            full = measure(causal_base, probe, lms_set, 4)
            reused = measure(causal_base, probe, lms_set, 4, cache)
        finally:
            editor.restore()
        assert reused == full  # exact, not approximate
        assert full["lms"] != measure(causal_base, probe, lms_set, 4)["lms"]  # the edit matters


def test_grid_from_the_stored_base_side_equals_the_grid_that_measures_it(causal_base, tmp_path):
    """Stage decoder_base's file (base point + states entering θ's first block), written and read
    back, gives the grid exactly the base point and points it measures itself; a reference
    without states (made where reuse is impossible) gives them too, from full passes."""
    space, gradiend, probe, lms_set = upper_block_setup(causal_base)
    settings = grid_settings([1.0, -1.0], [0.1, 1.0, 10.0], "bracket", 0.999, refine_steps=1)
    fresh = decoder_grid(causal_base, gradiend, space, probe, lms_set, settings)
    first = first_edited_block(space)
    made = decoder_reference(causal_base, probe, lms_set, settings.batch_size, first)
    assert made.first == first and set(made.states) == {("probe", 0), ("lms", 0)}
    save_decoder_reference(made, tmp_path / "he-she.safetensors")
    stored = load_decoder_reference(tmp_path / "he-she.safetensors", causal_base.device)
    assert stored.base_point == made.base_point == fresh[0]  # JSON floats read back exactly
    assert all(torch.equal(stored.states[k], made.states[k]) for k in made.states)
    stored = checked_reference(stored, probe, lms_set, settings.batch_size, "x.safetensors")
    calls = []
    real = causal_base.model.forward

    def counting(*args, **kwargs):
        calls.append(kwargs.get("inputs_embeds") is not None)
        return real(*args, **kwargs)

    causal_base.model.forward = counting
    try:
        reused = decoder_grid(
            causal_base, gradiend, space, probe, lms_set, settings, reference=stored
        )
    finally:
        del causal_base.model.forward
    assert reused == fresh
    assert calls and all(calls)  # every pass, the first one too, ran the upper block only
    # No states (block 0 has nothing below it): the base point is still reused, full passes.
    without = decoder_reference(causal_base, probe, lms_set, settings.batch_size, 0)
    assert without.first is None and without.states == {}
    save_decoder_reference(without, tmp_path / "none.safetensors")
    none = load_decoder_reference(tmp_path / "none.safetensors", causal_base.device)
    assert decoder_grid(causal_base, gradiend, space, probe, lms_set, settings, reference=none) == (
        fresh
    )
    # Made for other inputs (another batch size here): a one-line error naming the stage.
    with pytest.raises(GradiendError, match="x.safetensors.*stage decoder_base"):
        checked_reference(stored, probe, lms_set, settings.batch_size + 1, "x.safetensors")
    cache = LowerBlockCache.recorded(
        causal_base.model, first, {("lms", 0): made.states[("lms", 0)]}
    )
    with pytest.raises(KeyError):  # never records an (edited) model: a missing batch is an error
        cache.logits(causal_base.model, ("probe", 0), input_ids=torch.tensor([[1, 2]]))


def test_decoder_base_file_has_the_same_bytes_in_every_process(tmp_path):
    """safetensors writes metadata keys in hash-map order, which varies between processes: the
    decoder_base file keeps everything under one key, so its bytes depend only on its content
    (DVC hashes them; a fresh clone must reproduce the committed dvc.lock)."""
    import subprocess
    import sys

    script = (
        "import sys, torch\n"
        "from gradiend_core.decoder_eval import DecoderReference, save_decoder_reference\n"
        "point = {'lms': 0.1, 'balance_gap': 0.2, 'probs_by_dataset': {'he': {'he': 0.3}}}\n"
        "states = {('lms', 0): torch.arange(6.0).reshape(1, 2, 3),"
        " ('probe', 0): torch.ones(1, 1, 3)}\n"
        "save_decoder_reference(DecoderReference(point, 3, states, 'abc'), sys.argv[1])\n"
    )
    files = [tmp_path / f"{i}.safetensors" for i in range(4)]
    for f in files:
        subprocess.run([sys.executable, "-c", script, str(f)], check=True, cwd=REPO)
    assert len({f.read_bytes() for f in files}) == 1
    with pytest.raises(ValueError, match="one key"):
        from gradiend_core.io import save_tensors

        save_tensors(tmp_path / "x.safetensors", {"a": torch.ones(1)}, {"a": "1", "b": "2"})


def test_lower_block_reuse_keeps_each_blocks_attention_kind_gemma3(causal_base):
    """Gemma 3 picks sliding-window or full attention per block from ``config.layer_types[i]``,
    i counted along the block list: the upper-block pass shifts that list with the blocks, so it
    stays bit-identical to a full pass (here blocks 2 and 3 of 4 differ in kind, and a 3-token
    window makes the kinds disagree), before and after an edit."""
    kinds = ["sliding_attention", "sliding_attention", "sliding_attention", "full_attention"]
    base = gemma_base(
        causal_base.tokenizer, num_hidden_layers=4, sliding_window=3, layer_types=kinds
    )
    space = full_space(base, first_layer=-2)
    first = first_edited_block(space)
    assert first == 2
    probe = build_probe_set(base, PROBE_ROWS, CLASSES, TARGETS, MASK, max_length=32)
    lms_set = build_lms_set(base, NEUTRAL, max_length=64)
    cache = LowerBlockCache(base.model, first)
    assert measure(base, probe, lms_set, 4, cache) == measure(base, probe, lms_set, 4)
    assert cache.enabled  # the check on the unedited model passed
    assert base.model.config.layer_types[first] == "sliding_attention"  # restored afterwards
    gradiend = Gradiend.initialised(space.size, seed=1)
    with torch.no_grad():
        gradiend.decoder_weight.mul_(30.0)
    editor = WeightEditor(base.model, space)
    editor.apply_gradiend(gradiend, 1.0, 3.0)
    try:
        assert measure(base, probe, lms_set, 4, cache) == measure(base, probe, lms_set, 4)
    finally:
        editor.restore()


def test_reuse_is_refused_when_theta_reaches_the_embeddings(causal_base):
    assert first_edited_block(full_space(causal_base, exclude_embeddings=False)) is None
    assert first_edited_block(full_space(causal_base)) == 0  # nothing below block 0 to reuse
    assert not LowerBlockCache(causal_base.model, 0).enabled


def test_ascending_search_stops_at_the_first_lms_failure_and_keeps_the_choices(causal_base):
    space, gradiend, probe, lms_set = upper_block_setup(causal_base)
    rates = [0.01, 0.1, 1.0, 10.0]
    base_point, full = decoder_grid(
        causal_base,
        gradiend,
        space,
        probe,
        lms_set,
        grid_settings([1.0, -1.0], rates, lms_ratio=0.999),
    )
    _, searched = decoder_grid(
        causal_base,
        gradiend,
        space,
        probe,
        lms_set,
        grid_settings([1.0, -1.0], rates, search="ascending", lms_ratio=0.999),
    )
    floor = 0.999 * base_point["lms"]
    expected = []  # by hand from the full grid: each factor's points up to its first failure
    for f in (-1.0, 1.0):
        for p in (q for q in full if q["feature_factor"] == f):
            expected.append((f, p["learning_rate"]))
            if p["lms"] < floor:
                break
    assert [(p["feature_factor"], p["learning_rate"]) for p in searched] == expected
    assert len(searched) < len(full)  # the large edits break the LMS: the search saves points
    by_key = {(p["feature_factor"], p["learning_rate"]): p for p in full}
    assert all(p == by_key[(p["feature_factor"], p["learning_rate"])] for p in searched)
    context = GradiendContext(CLASSES, "alternative", "diff", "clm_next_token", "models/base")

    def stays_failed(f: float) -> bool:
        passing = [p["lms"] >= floor for p in full if p["feature_factor"] == f]
        return passing == sorted(passing, reverse=True)  # True..True, False..False

    # The precondition of the documented guarantee (no point passes again after a failure, as when
    # the LMS falls with η), which holds here; then the choices equal the full grid's.
    assert stays_failed(-1.0) and stays_failed(1.0)
    assert select(searched, base_point, context, 0.999) == select(full, base_point, context, 0.999)


@pytest.mark.parametrize("count", [1, 2, 5, 16])
def test_bracket_boundary_finds_every_boundary_in_log_calls(count):
    for boundary in range(count + 1):  # indices < boundary pass
        calls = []

        def passes(i: int, boundary: int = boundary, calls: list = calls) -> bool:
            calls.append(i)
            return i < boundary

        assert bracket_boundary(passes, count) == (boundary - 1, boundary)
        assert len(calls) <= int(np.ceil(np.log2(count + 1)))  # 16 points: at most 5 calls
        assert len(set(calls)) == len(calls)


@pytest.mark.parametrize("count", [1, 2, 5, 16])
def test_bracket_boundary_from_a_guess_finds_the_same_boundary_in_few_calls(count):
    """Started at another factor's boundary (``guess``), the search finds every boundary, the same
    as the plain bisection, in 2 calls when the guess is right (1 at either end of the grid) and
    in at most 2·log2 calls from the worst guess."""
    for boundary in range(count + 1):  # indices < boundary pass
        for guess in range(-1, count + 1):
            calls = []

            def passes(i: int, boundary: int = boundary, calls: list = calls) -> bool:
                calls.append(i)
                return i < boundary

            assert bracket_boundary(passes, count, guess) == (boundary - 1, boundary)
            assert len(set(calls)) == len(calls) and all(0 <= i < count for i in calls)
            if guess == boundary - 1:
                assert len(calls) == (1 if boundary in (0, count) else 2)
            assert len(calls) <= 2 * int(np.ceil(np.log2(count + 1)))


def test_refine_between_bisects_geometrically_with_three_digits():
    seen = []

    def passes(lr: float) -> bool:
        seen.append(lr)
        return lr <= 0.3

    settings = SimpleNamespace(refine_steps=2)
    # sqrt(0.2 * 0.5) = 0.3162 -> 0.316 fails; sqrt(0.2 * 0.316) = 0.2514 -> 0.251 passes
    assert refine_between(passes, 0.2, 0.5, settings) == 0.251
    assert seen == [0.316, 0.251]
    settings = SimpleNamespace(refine_steps=5)
    seen.clear()
    assert refine_between(lambda lr: seen.append(lr) or True, 1.0, 1.001, settings) == 1.0
    assert seen == []  # 3 significant digits cannot split (1, 1.001): no point is measured


def test_bracket_search_measures_the_boundary_and_a_finer_choice(causal_base):
    space, gradiend, probe, lms_set = upper_block_setup(causal_base)
    rates = [0.01, 0.1, 1.0, 10.0]  # the LMS falls with η here (see the ascending test)
    ratio = 0.999
    base_point, full = decoder_grid(
        causal_base,
        gradiend,
        space,
        probe,
        lms_set,
        grid_settings([1.0, -1.0], rates, "grid", ratio),
    )
    settings = grid_settings([1.0, -1.0], rates, "bracket", ratio, refine_steps=2)
    _, searched = decoder_grid(causal_base, gradiend, space, probe, lms_set, settings)
    floor = ratio * base_point["lms"]
    by_key = {(p["feature_factor"], p["learning_rate"]): p for p in full}
    context = GradiendContext(CLASSES, "alternative", "diff", "clm_next_token", "models/base")
    grid_choice = select(full, base_point, context, ratio)
    bracket_choice = select(searched, base_point, context, ratio)
    bracketed = []
    for f in (-1.0, 1.0):
        passing = [p["lms"] >= floor for p in full if p["feature_factor"] == f]
        assert passing == sorted(passing, reverse=True)  # the search's precondition holds here
        last = sum(passing) - 1  # the largest passing grid η, found by hand from the full grid
        mine = [p for p in searched if p["feature_factor"] == f]
        on_grid = [p for p in mine if p["learning_rate"] in rates]
        assert all(p == by_key[(f, p["learning_rate"])] for p in on_grid)  # same measurements
        assert (f, rates[last]) in {(f, p["learning_rate"]) for p in on_grid}
        assert len(on_grid) <= 3  # ceil(log2(4 + 1)) bisection points
        refined = [p["learning_rate"] for p in mine if p["learning_rate"] not in rates]
        if 0 <= last < len(rates) - 1:
            assert len(refined) == 2
            assert all(rates[last] < lr < rates[last + 1] for lr in refined)
            bracketed.append(f)
    assert bracketed  # at least one factor's boundary lies inside the grid and was refined
    for key, chosen in grid_choice.items():
        if key == "balance" or not chosen["constraint_met"]:
            continue
        mine = bracket_choice[key]
        assert mine["constraint_met"] and mine["lms"] >= floor
        assert mine["learning_rate"] >= chosen["learning_rate"]
    assert select(searched, base_point, context, ratio, balance=False)["balance"] is None
    # A balancing rewrite: each factor's passing range is walked like `ascending`, then refined.
    _, walked = decoder_grid(causal_base, gradiend, space, probe, lms_set, settings, balance=True)
    _, ascending = decoder_grid(
        causal_base,
        gradiend,
        space,
        probe,
        lms_set,
        grid_settings([1.0, -1.0], rates, "ascending", ratio),
    )
    on_grid = [
        (p["feature_factor"], p["learning_rate"]) for p in walked if p["learning_rate"] in rates
    ]
    assert on_grid == [(p["feature_factor"], p["learning_rate"]) for p in ascending]
    balance = select(walked, base_point, context, ratio)["balance"]
    assert balance["value"] <= grid_choice["balance"]["value"]  # the grid's choice was measured


def test_rewrite_reuses_the_grids_base_point_exactly(causal_base, tmp_path):
    """The rewrite's 'before' is the decoder grid's base point read back from its metrics JSON:
    equal to measuring the base model again, so both ways give the same rewrite record."""
    from gradiend_core.io import read_json, write_json
    from gradiend_core.rewrite import rewrite_checkpoint

    space, gradiend, probe, lms_set = upper_block_setup(causal_base)
    base_point, points = decoder_grid(
        causal_base, gradiend, space, probe, lms_set, grid_settings([1.0, -1.0], [0.01])
    )
    write_json(tmp_path / "evaluate_decoder.json", {"base": base_point})
    stored = read_json(tmp_path / "evaluate_decoder.json", "decoder metrics")["base"]
    assert stored == measure(causal_base, probe, lms_set, 4)  # bit for bit, JSON floats included
    context = GradiendContext(CLASSES, "alternative", "diff", "clm_next_token", "models/base")
    chosen = select(points, base_point, context, 0.99)["he"]
    kwargs = {
        "settings": SimpleNamespace(target_class="he", direction="strengthen"),
        "decoder": SimpleNamespace(batch_size=4, lms_ratio=0.99),
        "runtime": SimpleNamespace(device="cpu", dtype="float32"),
        "base_source": "tiny",
    }
    args = (causal_base, gradiend, space, context, chosen, probe, lms_set)
    fresh = rewrite_checkpoint(*args, out_dir=tmp_path / "a", **kwargs)
    reused = rewrite_checkpoint(*args, out_dir=tmp_path / "b", before=stored, **kwargs)
    assert reused == fresh
    assert fresh["lms_before"] == base_point["lms"] and fresh["lms_after"] != fresh["lms_before"]


def test_rewrite_takes_the_grids_measurement_of_the_point_only_for_the_same_weights(
    causal_base, tmp_path, monkeypatch
):
    """The saved model's figures are the grid's measurement of the chosen point, read back from
    grid.csv, once the reloaded checkpoint's weights equal the measured edit's; they equal
    measuring the reloaded checkpoint. With other weights the checkpoint is measured."""
    import gradiend_core.rewrite as rewrite
    from gradiend_core.decoder_eval import grid_table
    from gradiend_core.io import read_csv, write_csv

    space, gradiend, probe, lms_set = upper_block_setup(causal_base)
    settings = grid_settings([1.0, -1.0], [0.01, 0.1, 1.0])
    base_point, points = decoder_grid(causal_base, gradiend, space, probe, lms_set, settings)
    context = GradiendContext(CLASSES, "alternative", "diff", "clm_next_token", "models/base")
    chosen = select(points, base_point, context, 0.99)["he"]
    write_csv(tmp_path / "grid.csv", grid_table(points, base_point, context.pair))
    measured = rewrite.grid_measurement(read_csv(tmp_path / "grid.csv", "grid"), chosen, CLASSES)
    kwargs = {
        "settings": SimpleNamespace(target_class="he", direction="strengthen"),
        "decoder": SimpleNamespace(batch_size=4, lms_ratio=0.99),
        "runtime": SimpleNamespace(device="cpu", dtype="float32"),
        "base_source": "tiny",
        "before": base_point,
    }
    args = (causal_base, gradiend, space, context, chosen, probe, lms_set)
    fresh = rewrite.rewrite_checkpoint(*args, out_dir=tmp_path / "a", **kwargs)
    reused = rewrite.rewrite_checkpoint(*args, out_dir=tmp_path / "b", measured=measured, **kwargs)
    assert reused == fresh
    assert (
        rewrite.grid_measurement(
            read_csv(tmp_path / "grid.csv", "grid"), {**chosen, "learning_rate": 7.0}, CLASSES
        )
        is None
    )
    wrong = {**measured, "lms": 0.5}
    monkeypatch.setattr(rewrite, "same_weights", lambda a, b: False)
    checked = rewrite.rewrite_checkpoint(*args, out_dir=tmp_path / "c", measured=wrong, **kwargs)
    assert checked == fresh  # the wrong figures were not taken: the checkpoint was measured


def test_same_weights_compares_every_tensor_bit_for_bit(causal_base):
    import copy

    from gradiend_core.rewrite import same_weights

    other = copy.deepcopy(causal_base.model)
    assert same_weights(other, causal_base.model)
    with torch.no_grad():
        name, tensor = next(iter(other.named_parameters()))
        tensor.view(-1)[0] = torch.nextafter(tensor.view(-1)[0], torch.tensor(float("inf")))
    assert not same_weights(other, causal_base.model)
