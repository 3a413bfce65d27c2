"""GRADIEND training (docs/method.md §4.2-§4.7): correlation, batching, evaluation and sign flip,
convergence, seeds, a real run."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import corpus_lines
from test_gradients import MASK, full_space

from gradiend_core.data import build_dataset
from gradiend_core.errors import GradiendError
from gradiend_core.feature import ClassPair
from gradiend_core.gradiend import Gradiend
from gradiend_core.gradients import GradientComputer, batch_vectors, fixed_batches, row_vectors
from gradiend_core.selection import seed_summary, select_seed
from gradiend_core.stats import pearson
from gradiend_core.training import (
    EvalSet,
    Evaluation,
    batch_schedule,
    converged,
    diagnose,
    train_gradiend,
)
from gradiend_core.vectors import GradientStore, RowVectors

CLASSES = ["he", "she"]
PAIR = ClassPair("he", "she")


def encoder_label(factual_class: str, classes: list[str], source: str) -> int:
    """The sign table written out by hand: +1 for he, -1 for she, negated for source alternative."""
    sign = 1 if factual_class == "he" else -1
    return -sign if source == "alternative" else sign


def source_class(factual_class: str, classes: list[str], source: str) -> str:
    """The fed gradient's class, by hand: the other class for source alternative."""
    if source != "alternative":
        return factual_class
    return "she" if factual_class == "he" else "he"


def settings(**overrides) -> SimpleNamespace:
    values = {
        "source": "alternative",
        "target": "diff",
        "learning_rate": 1e-2,
        "weight_decay": 0.01,
        "batch_size": 2,
        "gradiend_batch_size": 2,
        "max_steps": 5,
        "eval_steps": 2,
        "input_normalization": "none",
        "normalize_sign": True,
        "convergence_threshold": 0.5,
        "convergence_mean_threshold": 0.5,
        "best_by": "correlation",
    }
    values.update(overrides)
    return SimpleNamespace(**values)


# ---- pearson -----------------------------------------------------------------------------------


def test_pearson_matches_numpy():
    rng = np.random.default_rng(0)
    for _ in range(5):
        x, y = rng.normal(size=20), rng.normal(size=20)
        y = y + 0.7 * x
        assert pearson(torch.tensor(x), torch.tensor(y)) == pytest.approx(
            np.corrcoef(x, y)[0, 1], abs=1e-12
        )
    x = np.array([0.3, -0.2, 0.9, 0.1])
    assert pearson(
        torch.tensor(x, dtype=torch.float32), torch.tensor([1.0, -1.0, 1.0, -1.0])
    ) == pytest.approx(np.corrcoef(x, [1, -1, 1, -1])[0, 1], abs=1e-6)
    assert pearson(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([6.0, 4.0, 2.0])) == pytest.approx(
        -1.0
    )


def test_pearson_is_zero_without_variance_or_data():
    assert pearson(torch.tensor([0.5, 0.5, 0.5]), torch.tensor([1.0, -1.0, 1.0])) == 0.0
    assert pearson(torch.tensor([0.1, 0.2, 0.3]), torch.tensor([1.0, 1.0, 1.0])) == 0.0
    assert pearson(torch.tensor([0.1]), torch.tensor([1.0])) == 0.0


# ---- round robin batches -------------------------------------------------------------------------


def class_rows(n_he: int, n_she: int) -> pd.DataFrame:
    return pd.DataFrame(
        {"factual_class": ["she"] * n_she + ["he"] * n_he, "id": list(range(n_she + n_he))}
    )


def test_fixed_batches_cut_each_class_in_order_and_drop_the_remainder():
    rows = class_rows(5, 7)  # ids 0..6 are she, 7..11 are he
    batches = fixed_batches(rows, CLASSES, 2)
    assert [b["id"].tolist() for b in batches] == [[7, 8], [9, 10], [0, 1], [2, 3], [4, 5]]
    with pytest.raises(GradiendError) as exc:
        fixed_batches(class_rows(5, 2), CLASSES, 3)
    assert "'she'" in str(exc.value) and "train.batch_size = 3" in str(exc.value)


def test_batch_schedule_alternates_classes_and_reshuffles_each_cycle():
    classes = ["he", "he", "she", "she", "she"]  # batches 0, 1 are he; 2, 3, 4 are she
    order = batch_schedule(classes, PAIR, 60, seed=3)
    assert [classes[i] for i in order] == ["he", "she"] * 30
    he, she = order[0::2], order[1::2]
    he_cycles = [tuple(he[i : i + 2]) for i in range(0, 30, 2)]
    she_cycles = [tuple(she[i : i + 3]) for i in range(0, 30, 3)]
    assert all(sorted(c) == [0, 1] for c in he_cycles)  # every batch once per cycle
    assert all(sorted(c) == [2, 3, 4] for c in she_cycles)
    assert len(set(she_cycles)) > 1  # a fresh shuffle each cycle
    assert batch_schedule(classes, PAIR, 24, seed=0) == batch_schedule(classes, PAIR, 24, seed=0)
    assert batch_schedule(classes, PAIR, 24, seed=0) != batch_schedule(classes, PAIR, 24, seed=1)
    with pytest.raises(GradiendError, match="'she' has no training batch"):
        batch_schedule(["he", "he"], PAIR, 4, seed=0)


# ---- evaluation with a synthetic computer --------------------------------------------------------


class FakeComputer:
    """Returns fixed source vectors per masked text (duck-types GradientComputer for
    EvalSet/train_gradiend)."""

    def __init__(self, table: dict[str, dict[str, torch.Tensor]]):
        self.table = table
        self.size = next(iter(table.values()))["factual"].numel()
        self.base = SimpleNamespace(device=torch.device("cpu"))
        self.rows = SimpleNamespace(supported=False)  # one row at a time, through ``vectors``

    def vectors(self, masked, factual, alternative, kinds, where="x"):
        return {k: torch.stack([self.table[m][k] for m in masked]).mean(0) for k in kinds}


def eval_rows(values: dict[str, float]) -> tuple[pd.DataFrame, FakeComputer]:
    """One row per text; the first coordinate of its vectors is ``value`` (the encoder below reads
    only it)."""
    rows = pd.DataFrame(
        {
            "masked": list(values),
            "factual": ["x"] * len(values),
            "alternative": ["y"] * len(values),
            "factual_class": [t.split()[0] for t in values],
        }
    )
    table = {
        t: {k: torch.tensor([v, 1.0]) for k in ("factual", "alternative", "diff")}
        for t, v in values.items()
    }
    return rows, FakeComputer(table)


def unit_encoder() -> Gradiend:
    model = Gradiend(2, 1)
    with torch.no_grad():
        model.encoder_weight.copy_(torch.tensor([[1.0, 0.0]]))
        model.decoder_weight.fill_(0.5)
        model.decoder_bias.copy_(torch.tensor([0.1, -0.2]))
    return model


@pytest.mark.parametrize("source", ["factual", "alternative"])
def test_eval_set_labels_groups_and_sign_flip(source):
    values = {"he a": -2.0, "he b": -1.5, "she a": 2.0, "she b": 1.0}
    rows, computer = eval_rows(values)
    ev_set = EvalSet(row_vectors(computer, rows, source, "validation"), PAIR, source)
    labels = [encoder_label(c, CLASSES, source) for c in rows["factual_class"]]
    assert ev_set.labels.tolist() == labels
    assert ev_set.groups == [source_class(c, CLASSES, source) for c in rows["factual_class"]]
    enc = np.tanh(np.array(list(values.values())))
    corr = np.corrcoef(enc, labels)[0, 1]
    model = unit_encoder()
    reconstruction = model(torch.tensor([[0.3, 1.0]])).clone()
    ev = ev_set.evaluate(model, step=7, normalize=True)
    should_flip = corr < -0.6
    assert ev.flipped == should_flip and ev.step == 7
    sign = -1 if should_flip else 1
    assert ev.correlation == pytest.approx(sign * corr, abs=1e-6)
    he_source, she_source = (
        source_class("he", CLASSES, source),
        source_class("she", CLASSES, source),
    )
    assert ev.mean_by_class[he_source] == pytest.approx(sign * enc[:2].mean(), abs=1e-6)
    assert ev.mean_by_class[she_source] == pytest.approx(sign * enc[2:].mean(), abs=1e-6)
    assert model.encoder_weight[0, 0].item() == sign * 1.0
    torch.testing.assert_close(model(torch.tensor([[0.3, 1.0]])), reconstruction)
    assert ev.encoder_norm == pytest.approx(1.0) and ev.decoder_norm == pytest.approx(
        model.decoder_weight.detach().norm().item()
    )


def test_no_flip_between_minus_point_six_and_zero_or_when_disabled():
    values = {"he a": -0.4, "he b": 0.6, "she a": 0.3, "she b": 0.2, "he c": -0.1, "she c": 0.1}
    rows, computer = eval_rows(values)
    enc = np.tanh(np.array(list(values.values())))
    labels = [1 if t.startswith("he") else -1 for t in values]
    corr = np.corrcoef(enc, labels)[0, 1]
    assert -0.6 < corr < 0
    ev = EvalSet(row_vectors(computer, rows, "factual", "validation"), PAIR, "factual").evaluate(
        unit_encoder(), 1, normalize=True
    )
    assert not ev.flipped and ev.correlation == pytest.approx(corr, abs=1e-6)
    strong = {"he a": -2.0, "she a": 2.0, "he b": -1.0, "she b": 1.0}
    rows, computer = eval_rows(strong)
    model = unit_encoder()
    ev = EvalSet(row_vectors(computer, rows, "factual", "validation"), PAIR, "factual").evaluate(
        model, 1, normalize=False
    )
    assert not ev.flipped and ev.correlation < -0.6 and model.encoder_weight[0, 0].item() == 1.0


# ---- convergence and seed selection --------------------------------------------------------------


def ev(step: int, corr: float, he: float, she: float) -> Evaluation:
    return Evaluation(step, corr, {"he": he, "she": she}, False, 1.0, 1.0)


@pytest.mark.parametrize(
    ("best", "expected"),
    [
        (None, False),
        (ev(0, 0.99, 0.9, -0.9), False),  # step 0 never counts
        (ev(3, 0.9, 0.8, -0.7), True),
        (ev(3, 0.5, 0.5, -0.5), True),  # thresholds are inclusive
        (ev(3, 0.49, 0.8, -0.7), False),
        (ev(3, 0.9, 0.8, -0.49), False),  # every class |mean| >= 0.5
        (ev(3, 0.9, -0.49, 0.8), False),
        (ev(3, 0.9, 0.8, 0.7), False),  # same sign
        (ev(3, 0.9, -0.8, -0.7), False),
        (ev(3, -0.9, -0.8, 0.7), False),  # signed correlation
    ],
)
def test_converged_rules(best, expected):
    assert converged(best, 0.5, 0.5) is expected


def test_converged_uses_the_given_thresholds():
    assert converged(ev(1, 0.7, 0.6, -0.6), 0.8, 0.5) is False
    assert converged(ev(1, 0.7, 0.6, -0.6), 0.6, 0.65) is False
    assert converged(ev(1, 0.7, 0.6, -0.6), 0.6, 0.55) is True


def report(seed: int, conv: bool, corr: float | None) -> dict:
    return {"seed": seed, "converged": conv, "best_correlation": corr}


def test_select_seed_prefers_converged_then_correlation_then_lower_seed():
    assert (
        select_seed([report(0, False, 0.95), report(1, True, 0.6), report(2, True, 0.7)])["seed"]
        == 2
    )
    assert select_seed([report(0, False, 0.95), report(1, True, 0.6)])["seed"] == 1
    assert (
        select_seed([report(5, True, 0.8), report(3, True, 0.8), report(4, False, 0.9)])["seed"]
        == 3
    )
    assert (
        select_seed([report(0, False, 0.3), report(1, False, None), report(2, False, 0.4)])["seed"]
        == 2
    )
    assert select_seed([report(0, False, None), report(1, False, -0.2)])["seed"] == 1


# ---- a short real run on the tiny Llama ----------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_examples() -> pd.DataFrame:
    feature = SimpleNamespace(classes=CLASSES, targets={"he": ["he"], "she": ["she"]}, mask=MASK)
    data = SimpleNamespace(
        min_words=5,
        max_words=30,
        min_left_context_words=3,
        max_per_class=12,
        balance=True,
        split={"train": 0.5, "validation": 0.25, "test": 0.25},
        neutral_size=4,
        neutral_excluded_words=[],
        seed=0,
    )
    corpus = build_dataset(corpus_lines(12), feature, data)
    return corpus.examples


def store_for(computer, train: pd.DataFrame, val: pd.DataFrame, config) -> GradientStore:
    """What the gradients stage stores, for the given rows (no test or neutral rows needed)."""
    empty = RowVectors(torch.zeros(0, computer.size), [], [])
    return GradientStore(
        config.source,
        config.target,
        batch_vectors(computer, train, CLASSES, config),
        row_vectors(computer, val, config.source, "validation"),
        empty,
        empty,
    )


def run(computer, examples: pd.DataFrame, seed: int, **overrides):
    train = examples[examples["split"] == "train"]
    val = examples[examples["split"] == "validation"].groupby("factual_class").head(3)
    config = settings(**overrides)
    store = store_for(computer, train, val, config)
    return train_gradiend(store, PAIR, config, seed), train, val


def test_train_gradiend_runs_records_evaluations_and_first_loss(causal_base, tiny_examples):
    computer = GradientComputer(
        causal_base, full_space(causal_base), "clm_next_token", MASK, max_length=32
    )
    result, train, val = run(computer, tiny_examples, seed=0)
    assert [e.step for e in result.evaluations] == [0, 2, 4, 5]
    assert len(result.losses) == 5 and all(np.isfinite(result.losses))
    evals = result.evaluations
    assert abs(result.best.correlation) == max(abs(e.correlation) for e in evals)
    assert result.best is next(
        e for e in evals if abs(e.correlation) == abs(result.best.correlation)
    )  # ties: earliest, step 0 included
    # Convergence by hand from the best record's numbers (thresholds 0.5 / 0.5).
    he, she = result.best.mean_by_class["he"], result.best.mean_by_class["she"]
    by_hand = (
        result.best.step > 0
        and result.best.correlation >= 0.5
        and min(abs(he), abs(she)) >= 0.5
        and he * she < 0
    )
    assert result.converged is by_hand
    assert set(result.best.mean_by_class) == set(CLASSES)

    # Step 0: the freshly initialised model on the validation source (alternative) gradients, labels
    # inverted.
    init = Gradiend.initialised(computer.size, 0)
    vectors = torch.stack(
        [
            computer.vectors([r.masked], [r.factual], [r.alternative], ("alternative",))[
                "alternative"
            ]
            for r in val.itertuples()
        ]
    )
    labels = torch.tensor([-1.0 if c == "he" else 1.0 for c in val["factual_class"]])
    corr0 = pearson(init.encode(vectors)[:, 0].detach(), labels)
    first = result.evaluations[0]
    assert first.flipped == (corr0 < -0.6)
    assert first.correlation == pytest.approx(-corr0 if first.flipped else corr0, abs=1e-5)

    # Step 1's loss: MSE of the initial model on the first two scheduled batches (he then she),
    # source -> target; the fixed batches are cut by hand: each class's rows in order, in twos.
    by_class = {c: train[train["factual_class"] == c] for c in CLASSES}
    batches = [
        by_class[c].iloc[i : i + 2] for c in CLASSES for i in range(0, len(by_class[c]) - 1, 2)
    ]
    first_two = batch_schedule([str(b["factual_class"].iloc[0]) for b in batches], PAIR, 2, 0)
    pairs = [
        computer.vectors(
            batches[i]["masked"].tolist(),
            batches[i]["factual"].tolist(),
            batches[i]["alternative"].tolist(),
            ("alternative", "diff"),
        )
        for i in first_two
    ]
    source = torch.stack([p["alternative"] for p in pairs])
    target = torch.stack([p["diff"] for p in pairs])
    expected = float(((init(source) - target) ** 2).mean().detach())
    assert result.losses[0] == pytest.approx(expected, rel=1e-4)

    # The returned weights are the best checkpoint's: re-evaluating them reproduces its record.
    again = EvalSet(
        row_vectors(computer, val, "alternative", "validation"), PAIR, "alternative"
    ).evaluate(result.model, result.best.step, normalize=False)
    assert again.correlation == pytest.approx(result.best.correlation, abs=1e-5)
    for c in CLASSES:
        assert again.mean_by_class[c] == pytest.approx(result.best.mean_by_class[c], abs=1e-5)


def test_train_gradiend_is_deterministic_per_seed(causal_base, tiny_examples):
    space = full_space(causal_base)
    kept = torch.randperm(space.full_size, generator=torch.Generator().manual_seed(0))[:3000]
    computer = GradientComputer(
        causal_base, space.with_kept(kept), "clm_next_token", MASK, max_length=32
    )
    a, _, _ = run(computer, tiny_examples, seed=1, max_steps=4, gradiend_batch_size=1)
    b, _, _ = run(computer, tiny_examples, seed=1, max_steps=4, gradiend_batch_size=1)
    c, _, _ = run(computer, tiny_examples, seed=2, max_steps=4, gradiend_batch_size=1)
    assert a.model.input_dim == 3000
    assert [e.step for e in a.evaluations] == [0, 2, 4]
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, b.model.state_dict()[k]), k
    assert a.losses == b.losses
    assert [e.row() for e in a.evaluations] == [e.row() for e in b.evaluations]
    assert not torch.equal(a.model.encoder_weight, c.model.encoder_weight)


def test_train_gradiend_learns_a_clean_synthetic_feature():
    """Vectors ±u (+ small noise): the encoder separates the classes and the run converges."""
    _, table, train, val = pair_table(50, torch.Generator().manual_seed(0))
    config = settings(
        learning_rate=0.05, weight_decay=0.0, gradiend_batch_size=1, max_steps=60, eval_steps=10
    )
    result = train_gradiend(store_for(FakeComputer(table), train, val, config), PAIR, config, 0)
    assert result.converged
    assert result.best.correlation > 0.9
    # Source alternative: he rows feed the she-token gradient, labelled -1 and grouped under 'she';
    # after normalisation class A's gradients ('he', fed by she rows) encode towards +1.
    assert result.best.mean_by_class["he"] > 0.5 and result.best.mean_by_class["she"] < -0.5
    assert result.losses[-1] < result.losses[0]


def test_best_checkpoint_ties_keep_the_earliest_evaluation():
    """Two validation rows (one per label): every correlation is exactly ±1, so evaluations tie."""
    gen = torch.Generator().manual_seed(1)
    u = torch.randn(20, generator=gen)
    table, rows = {}, []
    for cls, sign in (("he", 1.0), ("she", -1.0)):
        for i in range(3):
            g_f = sign * u + 0.1 * torch.randn(20, generator=gen)
            table[f"{cls} {i}"] = {"factual": g_f, "alternative": -g_f, "diff": 2 * g_f}
            rows.append(
                {"masked": f"{cls} {i}", "factual": cls, "alternative": "x", "factual_class": cls}
            )
    frame = pd.DataFrame(rows)
    val = frame.groupby("factual_class").head(1)
    config = settings(
        source="factual",
        learning_rate=0.01,
        weight_decay=0.0,
        batch_size=1,
        gradiend_batch_size=1,
        max_steps=6,
        eval_steps=2,
    )
    result = train_gradiend(store_for(FakeComputer(table), frame, val, config), PAIR, config, 0)
    assert [e.step for e in result.evaluations] == [0, 2, 4, 6]
    assert all(abs(e.correlation) == pytest.approx(1.0) for e in result.evaluations)
    # Ties keep the earliest evaluation, and step 0 competes: the run never improved on its start,
    # so it does not count as converged whatever its correlation.
    assert result.best is result.evaluations[0]
    assert not result.converged
    assert result.diagnosis.startswith("not converged: the best evaluation is step 0")
    again = EvalSet(
        row_vectors(FakeComputer(table), val, "factual", "validation"), PAIR, "factual"
    ).evaluate(result.model, 0, normalize=False)
    assert again.mean_by_class == pytest.approx(result.best.mean_by_class, abs=1e-6)
    assert again.mean_by_class != pytest.approx(
        result.evaluations[-1].mean_by_class, abs=1e-6
    )  # not the last weights


@pytest.mark.parametrize(
    ("best", "expected"),
    [
        (ev(4, 0.9, 0.8, -0.7), "converged"),
        (ev(0, 0.99, 0.9, -0.9), "not converged: the best evaluation is step 0"),
        (ev(4, 0.2, 0.8, 0.7), "collapsed: every class encodes to the same sign (he +0.800, she"),
        (ev(4, 0.2, -0.1, -0.3), "collapsed: every class encodes to the same sign (he -0.100"),
        (ev(4, 0.4, 0.8, -0.7), "not converged: correlation 0.400 is below"),
        (ev(4, 0.9, 0.8, -0.2), "not converged: a class mean is closer to 0 than"),
    ],
)
def test_diagnosis_says_why_in_words(best, expected):
    assert diagnose(best, 0.5, 0.5).startswith(expected)


def test_seed_summary_names_converged_seeds_and_the_choice():
    reports = [report(0, False, 0.95), report(1, True, 0.6), report(2, True, 0.7)]
    summary = seed_summary(reports)
    assert summary["seeds_tried"] == [0, 1, 2]
    assert summary["convergent_seeds"] == [1, 2] and summary["convergent_count"] == 2
    assert summary["best_seed"] == 2 and summary["best_correlation"] == 0.7 and summary["converged"]
    assert (
        summary["selection_strategy"]
        == "max validation score (train.best_by) among convergent seeds"
    )
    none = seed_summary([report(0, False, 0.3), report(1, False, 0.4)])
    assert none["best_seed"] == 1 and none["convergent_count"] == 0 and not none["converged"]
    assert none["selection_strategy"] == "max validation score (train.best_by; no seed converged)"


def test_seed_summary_aggregates_the_converged_seeds_only():
    # Converged 0.6, 0.7, 0.8 (the diverged 0.95 is left out): mean 0.7, sample std
    # sqrt((0.01 + 0 + 0.01) / 2) = 0.1.
    reports = [report(0, True, 0.6), report(1, False, 0.95), report(2, True, 0.7)]
    reports.append(report(3, True, 0.8))
    summary = seed_summary(reports)
    assert summary["trained_count"] == 4 and summary["convergent_count"] == 3
    assert summary["correlation_mean"] == pytest.approx(0.7)
    assert summary["correlation_std"] == pytest.approx(0.1)
    # Two converged, 0.6 and 0.7: mean 0.65, std sqrt(2 * 0.05^2 / 1) = 0.0707...
    two = seed_summary([report(0, True, 0.6), report(1, True, 0.7), report(2, False, None)])
    assert two["correlation_mean"] == pytest.approx(0.65)
    assert two["correlation_std"] == pytest.approx(math.sqrt(0.005))
    assert (two["convergent_count"], two["trained_count"]) == (2, 3)
    # One converged seed has a mean but no spread; none converged: both null.
    one = seed_summary([report(5, True, 0.9), report(6, False, 0.4)])
    assert one["correlation_mean"] == 0.9 and one["correlation_std"] is None
    none = seed_summary([report(0, False, 0.3), report(1, False, None)])
    assert none["correlation_mean"] is None and none["correlation_std"] is None
    assert (none["convergent_count"], none["trained_count"]) == (0, 2)


# ---- identity classes (docs/method.md §1.3) ------------------------------------------------------


def test_batch_schedule_takes_identity_classes_in_turn_after_the_pair():
    # Stored order: the pair's batches, then the identity classes' (they: 3 batches, it: 1).
    classes = ["he", "he", "she", "they", "they", "they", "it"]
    order = batch_schedule(classes, PAIR, 40, seed=5)
    assert [classes[i] for i in order] == ["he", "she", "they", "it"] * 10
    they = order[2::4]
    assert all(sorted(they[i : i + 3]) == [3, 4, 5] for i in range(0, 9, 3))  # once per cycle
    assert set(order[3::4]) == {6}
    # The pair's batches keep their own cycles: the he/she positions of the longer schedule are a
    # seeded order of the pair's batches like any other.
    assert sorted(order[0::4][:2]) == [0, 1] and set(order[1::4]) == {2}


def test_eval_set_leaves_identity_rows_out_of_the_correlation_and_reports_their_mean():
    values = {"he a": -2.0, "he b": -1.0, "she a": 2.0, "she b": 0.5, "they a": 0.3, "they b": -1.1}
    rows, computer = eval_rows(values)
    ev_set = EvalSet(row_vectors(computer, rows, "factual", "validation"), PAIR, "factual")
    assert ev_set.labels.tolist() == [1, 1, -1, -1, 0, 0]
    enc = np.tanh(np.array(list(values.values())))
    corr = np.corrcoef(enc[:4], [1, 1, -1, -1])[0, 1]  # the pair's rows only
    ev = ev_set.evaluate(unit_encoder(), 3, normalize=True)
    assert corr < -0.6 and ev.flipped  # flipped on the pair's correlation
    assert ev.correlation == pytest.approx(-corr, abs=1e-6)
    assert ev.mean_by_class == pytest.approx({"he": -enc[:2].mean(), "she": -enc[2:4].mean()})
    assert ev.other_means == pytest.approx({"they": -enc[4:].mean()})
    assert ev.row()["mean_they"] == pytest.approx(-enc[4:].mean())
    # Convergence reads the pair: he +0.863, she -0.713 pass although they's |mean| 0.254 < 0.5.
    assert abs(ev.other_means["they"]) < 0.5 and converged(ev, 0.5, 0.5)


def pair_table(n: int, gen: torch.Generator):
    """Gradients of a clean synthetic feature: he rows along +u, she rows along -u (8 rows each,
    6 train and 2 validation), alternatives opposite. Returns (u, table, train rows, validation
    rows)."""
    u = torch.randn(n, generator=gen)
    table, rows = {}, []
    for cls, sign in (("he", 1.0), ("she", -1.0)):
        for i in range(8):
            g_f = sign * u + 0.05 * torch.randn(n, generator=gen)
            g_a = -g_f + 0.05 * torch.randn(n, generator=gen)
            table[f"{cls} {i}"] = {"factual": g_f, "alternative": g_a, "diff": g_f - g_a}
            split = "train" if i < 6 else "validation"
            rows.append(
                {
                    "masked": f"{cls} {i}",
                    "factual": cls,
                    "alternative": "x",
                    "factual_class": cls,
                    "split": split,
                }
            )
    frame = pd.DataFrame(rows)
    return u, table, frame[frame["split"] == "train"], frame[frame["split"] == "validation"]


def test_neutral_sentences_steer_the_checkpoint_towards_specific_weights():
    """With validation neutral sentences the best checkpoint maximizes the correlation over the
    pair's rows and the neutral rows (label 0): a later checkpoint with a marginally higher pair
    correlation but neutral encodings pushed off 0 loses."""
    gen = torch.Generator().manual_seed(0)
    n = 40
    u, table, train, val = pair_table(n, gen)
    # Neutral vectors share a little of the feature direction: a growing encoder pushes them off 0.
    neutral = RowVectors(
        torch.stack([0.3 * u + torch.randn(n, generator=gen) for _ in range(6)]),
        ["neutral"] * 6,
        [f"n{i}" for i in range(6)],
    )
    config = settings(
        learning_rate=0.05, weight_decay=0.0, gradiend_batch_size=1, max_steps=60, eval_steps=5
    )
    store = store_for(FakeComputer(table), train, val, config)
    with_neutral = GradientStore(
        store.source,
        store.target,
        store.train,
        store.validation,
        store.test,
        store.neutral,
        neutral,
    )
    by_pair = train_gradiend(with_neutral, PAIR, config, 0)
    config_n = settings(
        learning_rate=0.05,
        weight_decay=0.0,
        gradiend_batch_size=1,
        max_steps=60,
        eval_steps=5,
        best_by="correlation_with_neutral",
    )
    by_neutral = train_gradiend(with_neutral, PAIR, config_n, 0)
    evals = by_neutral.evaluations
    # Same run, same evaluations; only the choice differs. Check each choice by hand.
    assert [e.row() for e in evals] == [e.row() for e in by_pair.evaluations]
    first_max = max(range(len(evals)), key=lambda i: (abs(evals[i].correlation), -i))
    assert by_pair.best is by_pair.evaluations[first_max]
    scores = [abs(e.correlation_with_neutral) for e in evals]
    assert by_neutral.best is evals[max(range(len(evals)), key=lambda i: (scores[i], -i))]
    # The neutral-aware choice keeps neutral text closer to 0 at (almost) the same correlation.
    assert by_neutral.best.neutral_abs_mean <= by_pair.best.neutral_abs_mean
    assert by_neutral.best.correlation > 0.9
    # Every evaluation's with-neutral correlation by hand: Pearson over pair rows + neutral (0).
    model = by_neutral.model
    enc = model.encode(torch.cat([with_neutral.validation.matrix, neutral.matrix]))[:, 0].detach()
    labels = [PAIR.label(c, "alternative") for c in with_neutral.validation.factual_class] + [0] * 6
    by_hand = np.corrcoef(enc.numpy(), np.array(labels, dtype=float))[0, 1]
    assert by_neutral.best.correlation_with_neutral == pytest.approx(by_hand, abs=1e-5)


def test_seeds_are_ranked_by_the_score_their_checkpoint_maximized():
    reports = [
        {"seed": 0, "converged": True, "best_correlation": 0.9999, "best_score": 0.95},
        {"seed": 1, "converged": True, "best_correlation": 0.9990, "best_score": 0.97},
    ]
    assert select_seed(reports)["seed"] == 1  # the score, not the pair correlation, decides
    old = [{k: v for k, v in r.items() if k != "best_score"} for r in reports]
    assert select_seed(old)["seed"] == 0  # reports without a score: the correlation


def test_unit_input_keeps_large_neutral_gradients_near_zero():
    """Neutral gradients 20x longer than the pair's (another objective or model, docs/method.md
    §4.1) and nearly orthogonal to the feature: a raw encoder's growing weights push them to +-1,
    the unit-input encoder (train.input_normalization: unit) reads only their direction and keeps
    them near 0, with the same perfect pair correlation."""
    gen = torch.Generator().manual_seed(1)
    n = 400
    _, table, train, val = pair_table(n, gen)
    neutral = 20.0 * torch.stack([torch.randn(n, generator=gen) for _ in range(32)])
    results = {}
    for mode in ("none", "unit"):
        config = settings(
            learning_rate=0.05,
            weight_decay=0.0,
            gradiend_batch_size=1,
            max_steps=30,
            eval_steps=5,
            input_normalization=mode,
        )
        result = train_gradiend(store_for(FakeComputer(table), train, val, config), PAIR, config, 0)
        assert result.best.correlation > 0.95 and result.model.input_normalization == mode
        results[mode] = float(result.model.encode(neutral)[:, 0].abs().mean())
    assert results["none"] > 0.5 and results["unit"] < 0.3, results


def test_training_steps_are_closed_form_grads_with_torch_fused_adamw(monkeypatch):
    """train_gradiend's update (Gradiend.fused_update, here with 64-coordinate chunks over
    n = 1000, a remainder of 40) replays as today's path: closed_form_grads on the scheduled
    batches + torch.optim.AdamW(fused=True), with the same evaluations and the sign flip at step 9
    negating torch's first moments. Losses and the tracked norms agree up to float rounding."""
    monkeypatch.setattr("gradiend_core.gradiend.UPDATE_CHUNK", 64)
    _, table, train, val = pair_table(1000, torch.Generator().manual_seed(2))
    config = settings(
        learning_rate=0.02,
        weight_decay=0.01,
        gradiend_batch_size=2,
        max_steps=12,
        eval_steps=3,
        input_normalization="unit",
    )
    store = store_for(FakeComputer(table), train, val, config)
    result = train_gradiend(store, PAIR, config, 0)
    assert [e.step for e in result.evaluations if e.flipped] == [9]

    model = Gradiend.initialised(1000, 0, input_normalization="unit")
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=0.02, weight_decay=0.01, eps=1e-8, fused=True
    )
    eval_set = EvalSet(store.validation, PAIR, "alternative")
    order = batch_schedule(store.train.classes, PAIR, 24, 0)
    sources, targets = store.train.vectors["alternative"], store.train.vectors["diff"]
    evaluations = [eval_set.evaluate(model, 0, True, optimizer)]
    losses = []
    for step in range(1, 13):
        picked = order[2 * (step - 1) : 2 * step]
        losses.append(model.closed_form_grads(sources[picked], targets[picked]))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 3 == 0:
            evaluations.append(eval_set.evaluate(model, step, True, optimizer))
    assert result.losses == pytest.approx(losses, rel=1e-5)
    for got, want in zip(result.evaluations, evaluations, strict=True):
        assert (got.step, got.flipped) == (want.step, want.flipped)
        assert got.correlation == pytest.approx(want.correlation, abs=1e-6)
        assert got.encoder_norm == pytest.approx(want.encoder_norm, rel=1e-5)
        assert got.decoder_norm == pytest.approx(want.decoder_norm, rel=1e-5)
        for cls in CLASSES:
            assert got.mean_by_class[cls] == pytest.approx(want.mean_by_class[cls], abs=1e-5)
