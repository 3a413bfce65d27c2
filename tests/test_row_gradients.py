"""One vector per row from one batched pass (gradiend_core/row_gradients.py): equal to each row's
own pass through autograd, for every objective, pruned and whole tensors, norms and biases."""

from __future__ import annotations

import random

import pytest
import torch
from test_gradients import MASK, full_space, make_head

from gradiend_core.gradients import GradientComputer
from gradiend_core.row_gradients import RowGradients

ROWS = [
    ("My brother said that [MASK] was very tired after the long day at work .", "he", "she"),
    ("The nurse wrote that [MASK] had found the keys .", "she", "he"),
    ("My friend said [MASK] was tired and [MASK] left .", "she", "he"),
    ("The old man believed that [MASK] would come to the party later tonight .", "he", "he"),
]
NEUTRAL = [
    "The weather was cold and windy all day long in the small town .",
    "We walked to the station and waited for the late train together .",
    "The river flooded the fields after three days of heavy rain .",
]


def pruned(space, seed: int, k: int):
    return space.with_kept(
        torch.randperm(space.full_size, generator=torch.Generator().manual_seed(seed))[:k]
    )


def assert_rows_equal_single_passes(computer: GradientComputer, kind: str) -> None:
    masked, factual, alternative = (list(c) for c in zip(*ROWS, strict=True))
    batched = computer.rows_vectors(masked, factual, alternative, kind)
    assert batched.shape == (len(ROWS), computer.size)
    for i, (m, f, a) in enumerate(ROWS):
        single = computer.vectors([m], [f], [a], (kind,))[kind]
        scale = float(single.abs().max())
        torch.testing.assert_close(batched[i], single, atol=1e-5 * max(scale, 1e-3), rtol=1e-4)
    if kind == "diff":  # the identity row (he -> he): exactly 0 even beside the other rows
        assert torch.count_nonzero(batched[3]) == 0
    else:
        assert all(float(batched[i].abs().max()) > 0 for i in range(len(ROWS)))


@pytest.mark.parametrize("kind", ["factual", "alternative", "diff"])
@pytest.mark.parametrize("whole", [False, True])
def test_clm_next_token_rows_equal_single_passes(causal_base, kind, whole):
    space = full_space(causal_base, first_layer=-1 if whole else None)
    space = space if whole else pruned(space, 0, 3000)
    computer = GradientComputer(causal_base, space, "clm_next_token", MASK, 32)
    assert computer.rows.supported
    assert_rows_equal_single_passes(computer, kind)


@pytest.mark.parametrize("kind", ["alternative", "diff"])
def test_clm_mlm_head_rows_equal_single_passes(causal_base, kind):
    space = pruned(full_space(causal_base), 1, 5000)
    head = make_head(causal_base)
    computer = GradientComputer(causal_base, space, "clm_mlm_head", MASK, 32, head)
    assert computer.rows.supported
    assert_rows_equal_single_passes(computer, kind)


@pytest.mark.parametrize("fixture", ["bert_base", "roberta_base"])
def test_masked_lm_rows_equal_single_passes(request, fixture):
    base = request.getfixturevalue(fixture)
    space = full_space(base, first_layer=0)  # attention/feed-forward linears, biases, LayerNorms
    assert any(n.endswith("LayerNorm.bias") for n in space.names)
    computer = GradientComputer(base, pruned(space, 2, 4000), "mlm", MASK, 32)
    assert computer.rows.supported
    assert_rows_equal_single_passes(computer, "diff")
    # The embeddings' LayerNorm lies below block 0, off the path the backward takes from there:
    # with it in θ every row gets a pass of its own.
    below = full_space(base)
    assert any(".embeddings.LayerNorm" in n for n in below.names)
    assert not GradientComputer(base, below, "mlm", MASK, 32).rows.supported


@pytest.mark.parametrize("fixture", ["causal_base", "bert_base"])
def test_neutral_rows_equal_single_passes_with_the_same_draws(request, fixture):
    base = request.getfixturevalue(fixture)
    objective = "clm_next_token" if fixture == "causal_base" else "mlm"
    space = pruned(full_space(base, first_layer=0), 3, 3000)
    computer = GradientComputer(base, space, objective, MASK, 32)
    assert computer.rows.supported
    batched = computer.neutral_rows_vectors(NEUTRAL, random.Random(5))
    rng = random.Random(5)
    for i, text in enumerate(NEUTRAL):
        single = computer.neutral_vector(text, rng)
        scale = float(single.abs().max())
        torch.testing.assert_close(batched[i], single, atol=1e-5 * scale, rtol=1e-4)


def test_the_norm_rule_is_read_off_the_module(causal_base, bert_base):
    rows = RowGradients(causal_base.model, full_space(causal_base))
    llama_norms = {k: v for k, v in rows.norm_rules.items() if "layernorm" in k}
    assert llama_norms and set(llama_norms.values()) == {("rms", "w", 1e-6)}
    bert = RowGradients(bert_base.model, full_space(bert_base))
    assert set(bert.norm_rules.values()) == {("layer", "w", 1e-12)}


def test_embeddings_in_theta_fall_back_to_one_pass_per_row(causal_base):
    space = pruned(full_space(causal_base, exclude_embeddings=False), 4, 3000)
    computer = GradientComputer(causal_base, space, "clm_next_token", MASK, 32)
    assert not computer.rows.supported  # nothing below the blocks can start the backward
    import pandas as pd

    from gradiend_core.gradients import row_vectors

    frame = pd.DataFrame(ROWS[:2], columns=["masked", "factual", "alternative"])
    frame["factual_class"] = ["he", "she"]
    stored = row_vectors(computer, frame, "alternative", "test")
    for i, (m, f, a) in enumerate(ROWS[:2]):
        single = computer.vectors([m], [f], [a], ("alternative",))["alternative"]
        assert torch.equal(stored.matrix[i], single)  # the per-row path itself


def gemma_base(tokenizer, **config):
    """A tiny Gemma 3 on the fixtures' tokenizer: per-head q/k norms, (1 + w) norm scales;
    ``config`` overrides fields of its Gemma3TextConfig."""
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    from gradiend_core.base_model import BaseModel

    fields = {
        "vocab_size": len(tokenizer),
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 8,
        "max_position_embeddings": 64,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = Gemma3TextConfig(**{**fields, **config})
    torch.manual_seed(0)
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():  # non-trivial norm weights (Gemma initialises them to 0, i.e. scale 1)
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0.0, 0.3)
    return BaseModel(model=model, tokenizer=tokenizer, kind="causal", device=torch.device("cpu"))


@pytest.mark.parametrize("kind", ["alternative", "diff"])
def test_per_head_norms_share_the_batched_pass_and_equal_single_passes(causal_base, kind):
    """Gemma 3 normalises queries and keys per head (q_norm and k_norm see one vector per head and
    token, their input laid out (batch, heads, tokens, head_dim)): their rows are summed over the
    heads, and every row's vector still equals the row's own autograd pass."""
    base = gemma_base(causal_base.tokenizer)
    space = full_space(base, first_layer=-1)
    assert any("q_norm" in n for n in space.names) and any("k_norm" in n for n in space.names)
    computer = GradientComputer(base, space, "clm_next_token", MASK, 32)
    assert computer.rows.supported
    assert set(computer.rows.norm_rules.values()) == {("rms", "1+w", 1e-6)}  # Gemma's (1 + w)
    per_head = {n.rsplit(".", 1)[-1] for n in computer.rows.token_axis}
    assert per_head == {"q_norm", "k_norm"}
    assert set(computer.rows.token_axis.values()) == {2}  # (batch, heads, tokens, head_dim)
    assert_rows_equal_single_passes(computer, kind)
    k_norm = next(p for p in computer.rows.parts if p.endswith("k_norm"))
    span = computer.rows.parts[k_norm][0]
    batched = computer.rows_vectors(*(list(c) for c in zip(*ROWS, strict=True)), kind)
    assert float(batched[0, span.offset : span.offset + span.count].abs().max()) > 0


def test_a_per_head_norm_with_an_ambiguous_token_axis_falls_back(causal_base, monkeypatch):
    """When the probe's length equals the number of heads, the token axis cannot be told apart:
    every row then gets a pass of its own."""
    import gradiend_core.row_gradients as rg

    base = gemma_base(causal_base.tokenizer)
    monkeypatch.setattr(rg, "PROBE_TOKENS", base.model.config.num_attention_heads)
    assert not RowGradients(base.model, full_space(base, first_layer=-1)).supported
