"""Encoder metrics, in-place weight edits, class probabilities, LMS and the selection policy (spec
§6-§7)."""

from __future__ import annotations

import random
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from test_gradients import MASK, full_space, word_ids
from torch import nn

from gradiend_core.decoder_eval import (
    build_lms_set,
    build_probe_set,
    class_probabilities,
    decoder_grid,
    language_modelling_score,
    measure,
    probs_by_dataset,
    select,
)
from gradiend_core.encoder_eval import encoder_metrics
from gradiend_core.errors import GradiendError
from gradiend_core.gradiend import Gradiend, GradiendContext
from gradiend_core.tokens import class_token_ids
from gradiend_core.weight_edit import WeightEditor, update_direction

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


def test_class_token_ids_are_the_in_vocabulary_casings(causal_base, bert_base):
    for base in (causal_base, bert_base):
        tok = base.tokenizer
        ids = class_token_ids(tok, base.kind, TARGETS)
        # The fixture vocabulary has 'he', 'He', 'she', 'She' but no upper-case forms (those map to
        # the unk token).
        assert sorted(ids["he"]) == sorted(tok.convert_tokens_to_ids(["he", "He"]))
        assert sorted(ids["she"]) == sorted(tok.convert_tokens_to_ids(["she", "She"]))
        assert tok.unk_token_id not in ids["he"] + ids["she"]
        with pytest.raises(GradiendError, match="single-token"):
            class_token_ids(tok, base.kind, {"he": ["he"], "she": ["zyzzyva"]})


def reference_causal_probs(base, rows: pd.DataFrame) -> torch.Tensor:
    tok = base.tokenizer
    ids = {c: tok.convert_tokens_to_ids([w, w.capitalize()]) for c, [w] in TARGETS.items()}
    out = []
    for masked in rows["masked"]:
        prefix = word_ids(tok, masked.split(MASK)[0].split())
        with torch.no_grad():
            probs = base.model(input_ids=torch.tensor([prefix])).logits[0, -1].softmax(-1)
        out.append([float(probs[ids[c]].sum()) for c in CLASSES])
    return torch.tensor(out)


def reference_masked_probs(base, rows: pd.DataFrame) -> torch.Tensor:
    tok = base.tokenizer
    ids = {c: tok.convert_tokens_to_ids([w, w.capitalize()]) for c, [w] in TARGETS.items()}
    out = []
    for masked in rows["masked"]:
        seq = [tok.cls_token_id] + word_ids(tok, masked.split()) + [tok.sep_token_id]
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


def test_class_probabilities_masked_equal_unpadded_per_row_softmax(bert_base):
    probe = build_probe_set(bert_base, PROBE_ROWS, CLASSES, TARGETS, MASK, max_length=32)
    torch.testing.assert_close(
        class_probabilities(bert_base, probe, 4),
        reference_masked_probs(bert_base, PROBE_ROWS),
        atol=1e-5,
        rtol=1e-4,
    )
    with pytest.raises(GradiendError, match="truncation"):
        build_probe_set(bert_base, PROBE_ROWS, CLASSES, TARGETS, MASK, max_length=5)


# ---- language-modelling score --------------------------------------------------------------------


def test_causal_lms_is_one_over_one_plus_shifted_mean_nll(causal_base):
    tok = causal_base.tokenizer
    total, count, unshifted = 0.0, 0, 0.0
    for text in NEUTRAL:
        ids = torch.tensor(word_ids(tok, text.split()))
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
        SimpleNamespace(feature_factors=[1.0, -1.0], learning_rates=[10.0, 1.0], batch_size=4),
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
) -> dict:
    return {
        "feature_factor": f,
        "learning_rate": lr,
        "lms": lms,
        "probs_by_dataset": {
            "he": {"he": p_he_on_he, "she": p_she_on_he},
            "she": {"he": p_he_on_she, "she": p_she_on_she},
        },
    }


BASE = {
    "lms": 0.5,
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
    assert set(out) == {"he", "he_weaken", "she", "she_weaken"}
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
