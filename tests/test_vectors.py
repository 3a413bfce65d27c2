"""The gradients stage's stored vectors (docs/method.md §4.2-§4.3, §6): every reused vector equals
the one computed afresh, and the stored form round-trips exactly."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch
from conftest import corpus_lines
from test_gradients import MASK, full_space

from gradiend_core.data import build_dataset, take_balanced
from gradiend_core.errors import GradiendError
from gradiend_core.feature import ClassPair
from gradiend_core.gradients import GradientComputer, compute_store
from gradiend_core.training import EvalSet, train_gradiend
from gradiend_core.vectors import GradientStore

CLASSES = ["he", "she"]
PAIR = ClassPair("he", "she")
SETTINGS = SimpleNamespace(source="alternative", target="diff", batch_size=2)


@pytest.fixture(scope="module")
def examples():
    feature = SimpleNamespace(classes=CLASSES, targets={"he": ["he"], "she": ["she"]}, mask=MASK)
    data = SimpleNamespace(
        min_words=5,
        max_words=30,
        min_left_context_words=3,
        max_per_class=10,
        balance=True,
        split={"train": 0.6, "validation": 0.2, "test": 0.2},
        neutral_size=3,
        neutral_excluded_words=[],
        seed=0,
    )
    corpus = build_dataset(corpus_lines(10), feature, data)
    return corpus.examples, corpus.neutral["text"].tolist()


def make_store(causal_base, examples):
    rows, neutral = examples
    computer = GradientComputer(
        causal_base, full_space(causal_base, first_layer=-1), "clm_next_token", MASK, 32
    )
    validation = take_balanced(rows, "validation", CLASSES, 2)
    test = take_balanced(rows, "test", CLASSES, 2)
    store = compute_store(computer, rows, validation, test, neutral, PAIR, SETTINGS, 7)
    return computer, store, (rows, validation, test, neutral)


def test_every_stored_vector_equals_a_fresh_computation(causal_base, examples):
    computer, store, (rows, validation, test, neutral) = make_store(causal_base, examples)
    train = rows[rows["split"] == "train"]
    # Fixed batches by hand: each class's train rows in order, in twos, he first.
    expected_batches = []
    for cls in CLASSES:
        part = train[train["factual_class"] == cls]
        expected_batches += [(cls, part.iloc[i : i + 2]) for i in range(0, len(part) - 1, 2)]
    assert store.train.classes == [c for c, _ in expected_batches]
    for i, (_, batch) in enumerate(expected_batches):
        fresh = computer.vectors(
            batch["masked"].tolist(),
            batch["factual"].tolist(),
            batch["alternative"].tolist(),
            ("alternative", "diff"),
        )
        assert torch.equal(store.train.vectors["alternative"][i], fresh["alternative"])
        assert torch.equal(store.train.vectors["diff"][i], fresh["diff"])
    assert computer.rows.supported  # rows share a pass (row_gradients.py)
    for stored, frame in ((store.validation, validation), (store.test, test)):
        assert stored.factual_class == frame["factual_class"].tolist()
        again = computer.rows_vectors(
            frame["masked"].tolist(),
            frame["factual"].tolist(),
            frame["alternative"].tolist(),
            "alternative",
        )
        assert torch.equal(stored.matrix, again)  # recomputed the same way: the same bits
        for i, r in enumerate(frame.itertuples(index=False)):  # each row's own pass: to rounding
            fresh = computer.vectors([r.masked], [r.factual], [r.alternative], ("alternative",))
            scale = float(fresh["alternative"].abs().max())
            torch.testing.assert_close(
                stored.matrix[i], fresh["alternative"], atol=1e-5 * scale, rtol=1e-4
            )
    assert torch.equal(
        store.neutral.matrix, computer.neutral_rows_vectors(neutral, random.Random(7))
    )
    rng = random.Random(7)  # the neutral rows' positions: one seeded generator, in order
    for i, text in enumerate(neutral):
        single = computer.neutral_vector(text, rng)
        scale = float(single.abs().max())
        torch.testing.assert_close(store.neutral.matrix[i], single, atol=1e-5 * scale, rtol=1e-4)
    assert store.neutral.factual_class == ["neutral"] * len(neutral)


def test_the_store_round_trips_exactly(causal_base, examples, tmp_path):
    _, store, _ = make_store(causal_base, examples)
    store.save(tmp_path / "gradients")
    back = GradientStore.load(
        tmp_path / "gradients", parts=("train", "validation", "test", "neutral")
    )
    assert (back.source, back.target, back.train.classes) == (
        "alternative",
        "diff",
        store.train.classes,
    )
    for kind in ("alternative", "diff"):
        assert torch.equal(back.train.vectors[kind], store.train.vectors[kind])
    for name in ("validation", "test", "neutral"):
        a, b = getattr(store, name), getattr(back, name)
        assert torch.equal(a.matrix, b.matrix) and a.factual_class == b.factual_class
        assert a.texts == b.texts
    partial = GradientStore.load(tmp_path / "gradients", parts=("test",))
    assert partial.train is None and partial.validation is None and partial.test is not None


def test_training_refuses_a_store_of_other_vectors(causal_base, examples):
    _, store, _ = make_store(causal_base, examples)
    settings = SimpleNamespace(source="factual", target="diff")
    with pytest.raises(GradiendError, match="models/gradients holds alternative/diff vectors"):
        train_gradiend(store, PAIR, settings, seed=0)


# ---- identity rows of a class outside the pair (docs/method.md §1.3) -----------------------------


@pytest.fixture(scope="module")
def three_class_examples():
    from conftest import PREDICATES, SUBJECTS, VERBS

    they = [
        f"{s.capitalize()} {v} they {p} ."
        for s, v, p in zip(SUBJECTS, VERBS * 2, PREDICATES * 2, strict=True)
    ]
    feature = SimpleNamespace(
        classes=["he", "she", "they"],
        pairs=None,
        targets={"he": ["he"], "she": ["she"], "they": ["they"]},
        mask=MASK,
    )
    data = SimpleNamespace(
        min_words=5,
        max_words=30,
        min_left_context_words=3,
        max_per_class=5,
        balance=True,
        split={"train": 0.6, "validation": 0.2, "test": 0.2},
        neutral_size=2,
        neutral_excluded_words=[],
        seed=0,
    )
    return build_dataset(corpus_lines(10) + they, feature, data).examples


def test_identity_batches_and_rows_are_stored_with_their_class_and_a_zero_diff(
    causal_base, three_class_examples
):
    rows = three_class_examples
    computer = GradientComputer(
        causal_base, full_space(causal_base, first_layer=-1), "clm_next_token", MASK, 32
    )
    classes = ["he", "she", "they"]
    validation = take_balanced(rows, "validation", classes, 2)
    test = take_balanced(rows, "test", classes, 2)
    settings = SimpleNamespace(source="alternative", target="diff", batch_size=1)
    store = compute_store(computer, rows, validation, test, [], PAIR, settings, 7, ["they"])
    # 3 train rows per class, batches of 1: he, he, he, she, she, she, then the identity class.
    assert store.train.classes == ["he"] * 3 + ["she"] * 3 + ["they"] * 3
    they = store.train.indices_of("they")
    assert torch.count_nonzero(store.train.vectors["diff"][they]) == 0  # g_f - g_f, exactly
    assert all(torch.count_nonzero(store.train.vectors["diff"][i]) > 0 for i in range(6))
    # The source of an identity batch is its own word's gradient (alternative = factual).
    first = rows[(rows["split"] == "train") & (rows["factual_class"] == "they")].iloc[0]
    assert first["factual"] == first["alternative"] == "they"
    fresh = computer.vectors([first["masked"]], ["they"], ["they"], ("factual",))["factual"]
    assert torch.equal(store.train.vectors["alternative"][they[0]], fresh)
    assert store.validation.factual_class == ["he", "she", "they"]
    assert store.test.factual_class == ["he", "she", "they"]
    assert store.neutral.matrix.shape == (0, computer.size)
    labels = EvalSet(store.validation, PAIR, "alternative").labels.tolist()
    assert labels == [-1.0, 1.0, 0.0]  # source alternative negates the pair; identity rows are 0


def test_training_reads_the_validation_neutral_sentences_by_default(
    causal_base, examples, tmp_path
):
    rows, neutral = examples
    computer = GradientComputer(
        causal_base, full_space(causal_base, first_layer=-1), "clm_next_token", MASK, 32
    )
    validation = take_balanced(rows, "validation", CLASSES, 2)
    store = compute_store(
        computer, rows, validation, validation, neutral[:1], PAIR, SETTINGS, 7, (), neutral[1:3]
    )
    store.save(tmp_path / "gradients")
    back = GradientStore.load(tmp_path / "gradients")  # what the train stage reads
    assert back.validation_neutral is not None and back.validation_neutral.texts == neutral[1:3]
    assert back.test is None and back.neutral is None
    # seeded neutral_seed + 1, apart from the encoder evaluation's rows
    again = computer.neutral_rows_vectors(neutral[1:3], random.Random(8))
    assert torch.equal(back.validation_neutral.matrix, again)
    rng = random.Random(8)
    for i, text in enumerate(neutral[1:3]):
        single = computer.neutral_vector(text, rng)
        torch.testing.assert_close(
            back.validation_neutral.matrix[i],
            single,
            atol=1e-5 * float(single.abs().max()),
            rtol=1e-4,
        )
