"""Pre-pruning (docs/method.md §5.2): top-k selection, importance = |signed mean gradient|,
stratified sampling."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from test_gradients import EX1, EX2, EX3, MASK, full_space, ref_clm_next_token

from gradiend_core.errors import GradiendError
from gradiend_core.gradients import GradientComputer
from gradiend_core.pruning import importance, stratified_sample, top_k


def reference_top_k(scores: list[float], k: int) -> list[int]:
    """Largest first, ties by the lower index; then ascending."""
    return sorted(sorted(range(len(scores)), key=lambda i: (-scores[i], i))[:k])


@pytest.mark.parametrize(
    ("n", "fraction", "k"),
    [(10, 0.25, 3), (10, 0.3, 3), (100, 0.07, 7), (7, 0.01, 1), (20, 1.0, 20), (1000, 0.29, 290)],
)
def test_top_k_fraction_keeps_ceil_of_fraction_times_n(n, fraction, k):
    gen = torch.Generator().manual_seed(n)
    scores = torch.rand(n, generator=gen)
    got = top_k(scores, fraction)
    assert got.tolist() == reference_top_k(scores.tolist(), k)
    assert got.dtype == torch.int64


def test_top_k_count_ties_and_order():
    scores = torch.tensor([1.0, 5.0, 0.5, 5.0, 5.0, 2.0, 0.0, 2.0])
    assert top_k(scores, 2).tolist() == [1, 3]  # three-way tie at 5: the two lowest indices
    assert top_k(scores, 4).tolist() == [1, 3, 4, 5]  # tie at 2: index 5 before 7
    assert top_k(scores, 1).tolist() == [1]
    assert top_k(scores, 8).tolist() == list(range(8))
    assert top_k(torch.zeros(6), 3).tolist() == [0, 1, 2]
    scores = torch.tensor([0.1, 0.9, 0.3, 0.7, 0.5])
    got = top_k(scores, 3)
    assert got.tolist() == [1, 3, 4]
    assert torch.all(got[1:] > got[:-1])


def test_top_k_more_than_n_is_an_error():
    with pytest.raises(GradiendError) as exc:
        top_k(torch.rand(5), 6)
    assert "'pre_prune.topk'" in str(exc.value) and "(5)" in str(exc.value)


def rows_frame(n_he: int, n_she: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "masked": (
                [f"he row {i} [MASK]" for i in range(n_he)]
                + [f"she row {i} [MASK]" for i in range(n_she)]
            ),
            "factual_class": ["he"] * n_he + ["she"] * n_she,
            "id": list(range(n_he + n_she)),
        }
    )


@pytest.mark.parametrize(
    ("n_samples", "want"),
    [(8, {"he": 4, "she": 4}), (7, {"he": 4, "she": 3}), (2, {"he": 1, "she": 1})],
)
def test_stratified_sample_counts_and_determinism(n_samples, want):
    rows = rows_frame(30, 20)
    a = stratified_sample(rows, ["he", "she"], n_samples, seed=5)
    assert a["factual_class"].value_counts().to_dict() == want
    assert a["id"].is_unique  # without replacement when the pool is large enough
    assert list(a["factual_class"]) == ["he"] * want["he"] + ["she"] * want["she"]
    pd.testing.assert_frame_equal(a, stratified_sample(rows, ["he", "she"], n_samples, seed=5))
    assert set(a["id"]) <= set(rows["id"])
    if n_samples == 8:
        draws = {
            tuple(stratified_sample(rows, ["he", "she"], n_samples, seed=s)["id"]) for s in range(6)
        }
        assert len(draws) > 1  # the seed matters


def test_stratified_sample_uses_replacement_only_when_a_class_is_too_small():
    rows = rows_frame(10, 2)
    sample = stratified_sample(rows, ["he", "she"], 8, seed=0)
    assert sample["factual_class"].value_counts().to_dict() == {"he": 4, "she": 4}
    assert sample[sample["factual_class"] == "he"]["id"].is_unique
    assert set(sample[sample["factual_class"] == "she"]["id"]) <= {10, 11}


def test_stratified_sample_needs_every_class():
    with pytest.raises(GradiendError, match="'she'"):
        stratified_sample(rows_frame(5, 0), ["he", "she"], 4, seed=0)


def three_examples() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "masked": [EX1, EX2, EX3],
            "factual": ["he", "she", "he"],
            "alternative": ["she", "he", "she"],
            "factual_class": ["he", "she", "he"],
        }
    )


@pytest.mark.parametrize("source", ["diff", "alternative"])
def test_importance_is_the_absolute_signed_mean_of_per_example_vectors(causal_base, source):
    space = full_space(causal_base)
    sample = three_examples()
    vectors = []
    for r in sample.itertuples(index=False):
        g_f = ref_clm_next_token(causal_base, space, r.masked, r.factual)
        g_a = ref_clm_next_token(causal_base, space, r.masked, r.alternative)
        vectors.append(g_f - g_a if source == "diff" else g_a)
    expected = torch.stack(vectors).double().mean(0).abs()
    computer = GradientComputer(causal_base, space, "clm_next_token", MASK, max_length=64)
    got = importance(computer, sample, source)
    assert got.shape == (space.full_size,)
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-4)
    # The signed mean, not the mean of absolute values: they differ where examples disagree in sign.
    mean_abs = torch.stack(vectors).double().abs().mean(0)
    assert (mean_abs - expected).max() > 1e-3
    # Pruning by it keeps the largest-importance coordinates.
    k = math.ceil(0.01 * space.full_size)
    assert top_k(got, 0.01).tolist() == reference_top_k(got.tolist(), k)


@pytest.mark.parametrize("k", [1, 7, 100, 999, 1500, 2000])
def test_top_k_with_many_ties_equals_the_stable_sort_prefix(k):
    """The k-th-value threshold path keeps exactly the stable-sort prefix, however many scores
    tie at the threshold."""
    scores = torch.randint(0, 20, (2000,), generator=torch.Generator().manual_seed(k)).float()
    assert top_k(scores, k).tolist() == reference_top_k(scores.tolist(), k)


def test_importance_sums_rows_across_shared_passes_for_the_mlm_head(causal_base, monkeypatch):
    """clm_mlm_head, two rows per pass (so three examples take two passes): the importance is
    still |mean| of the per-example vectors from hand-pooled whole texts."""
    from test_gradients import make_head, ref_head

    import gradiend_core.pruning as pruning

    calls = []
    real = GradientComputer.summed_vector
    monkeypatch.setattr(pruning, "PASS_ROWS", 2)
    monkeypatch.setattr(
        GradientComputer, "summed_vector", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    space = full_space(causal_base)
    head = make_head(causal_base)
    sample = three_examples()
    vectors = [
        ref_head(causal_base, space, head, r.masked, r.factual)
        - ref_head(causal_base, space, head, r.masked, r.alternative)
        for r in sample.itertuples(index=False)
    ]
    expected = torch.stack(vectors).double().mean(0).abs()
    computer = GradientComputer(causal_base, space, "clm_mlm_head", MASK, max_length=64, head=head)
    got = importance(computer, sample, "diff")
    assert len(calls) == 2 and expected.max() > 0
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-4)
