"""Stored hidden states entering θ's lowest block (gradiend_core/lower_states.py, stage
lower_states): a pass from them equals a full pass, every consumer gives the vectors it gives
without them, and stale or inexact states are never used."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from test_gradients import EX1, EX2, EX3, MASK, full_space, make_head, manual_pooled

from gradiend_core.errors import GradiendError
from gradiend_core.gradients import GradientComputer, row_vectors
from gradiend_core.lower_states import (
    compute_row_states,
    load_row_states,
    save_row_states,
    states_block,
)
from gradiend_core.mlm_head import build_masked_batch, pooled_features, pooled_mask_states
from gradiend_core.pruning import importance

TEXTS = [EX1, EX2, EX3, "My friend said [MASK] was tired and [MASK] walked ."]
ATOL = 1e-5


def row_states(base, texts=TEXTS, first=1, batch_size=3, max_length=64, pooling=3):
    head = make_head(base, pooling)
    return compute_row_states(
        base.model,
        base.tokenizer,
        texts,
        MASK,
        max_length,
        pooling,
        head.mask_embedding,
        first,
        batch_size,
    )


def test_states_are_the_inputs_of_the_block_recorded_on_each_row_alone(causal_base):
    """Each text's states equal those a hook on block 1 records when the text runs alone (an
    independent full pass), and a text listed twice is stored once."""
    states = row_states(causal_base, [*TEXTS, EX1])
    assert states is not None and states.first == 1 and len(states.ids) == len(TEXTS)
    model, tok = causal_base.model, causal_base.tokenizer
    head = make_head(causal_base)
    for text in TEXTS:
        batch = build_masked_batch(tok, [text], MASK, 64, 3)  # one row, no padding
        seen = []

        def record(_module, args, kwargs, seen=seen):
            seen.append(args[0] if args else kwargs["hidden_states"])

        hook = model.model.layers[1].register_forward_pre_hook(record, with_kwargs=True)
        with torch.no_grad():
            pooled_mask_states(model, batch, head.mask_embedding, 3)
        hook.remove()
        at = states.texts[text]
        assert states.ids[at] == batch.sequences.input_ids[0].tolist()
        torch.testing.assert_close(states.states[at], seen[0][0], atol=ATOL, rtol=1e-4)


def test_pooled_states_from_stored_states_equal_whole_text_passes(causal_base):
    """Packed (model given) and left-padded layouts: only block 1 runs, and the pooled states
    equal hand-pooled full passes over each whole text."""
    states = row_states(causal_base)
    model, tok = causal_base.model, causal_base.tokenizer
    head = make_head(causal_base)
    expected = torch.cat([manual_pooled(causal_base, t, 3) for t in TEXTS]).detach()
    for packed_by in (model, None):
        batch = build_masked_batch(tok, TEXTS, MASK, 64, 3, packed_by, states)
        assert batch.lower is not None and batch.lower[0] == 1
        ran = []
        hook = model.model.layers[0].register_forward_hook(lambda *_, ran=ran: ran.append(1))
        with torch.no_grad():
            got = pooled_mask_states(model, batch, head.mask_embedding, 3)
        hook.remove()
        assert ran == []  # block 0 never ran
        torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-4)
    feats, owners = pooled_features(model, tok, TEXTS, MASK, 64, 3, head.mask_embedding, 2, states)
    torch.testing.assert_close(feats, expected, atol=ATOL, rtol=1e-4)
    assert owners.tolist() == [0, 1, 2, 3, 3]


def test_gradient_vectors_with_states_equal_those_without(causal_base):
    """Batch-mean vectors, per-row vectors (one shared pass) and pre-pruning's summed vectors:
    the same with the stored states as with full passes."""
    space = full_space(causal_base, first_layer=1)
    assert states_block(space) == 1
    head = make_head(causal_base)
    states = row_states(causal_base)
    plain = GradientComputer(causal_base, space, "clm_mlm_head", MASK, 64, head)
    reused = GradientComputer(causal_base, space, "clm_mlm_head", MASK, 64, head, states)
    masked, factual, alternative = TEXTS[:3], ["he", "she", "he"], ["she", "he", "she"]
    kinds = ("alternative", "diff")
    a = plain.vectors(masked, factual, alternative, kinds)
    b = reused.vectors(masked, factual, alternative, kinds)
    for kind in kinds:
        assert a[kind].abs().max() > 0
        torch.testing.assert_close(b[kind], a[kind], atol=ATOL, rtol=1e-4)
    frame = pd.DataFrame({"masked": masked, "factual": factual, "alternative": alternative})
    frame["factual_class"] = factual
    assert reused.rows.supported
    torch.testing.assert_close(
        row_vectors(reused, frame, "diff", "test").matrix,
        row_vectors(plain, frame, "diff", "test").matrix,
        atol=ATOL,
        rtol=1e-4,
    )
    torch.testing.assert_close(
        importance(reused, frame, "diff"), importance(plain, frame, "diff"), atol=ATOL, rtol=1e-4
    )


def test_states_above_thetas_lowest_block_are_not_used(causal_base):
    """States entering block 1 cannot serve a θ that includes block 0: the computer runs full
    passes (block 0 runs) and its vectors equal a computer's without states, with a nonzero
    block-0 part."""
    space = full_space(causal_base)
    assert states_block(space) is None  # θ starts at block 0: no block below it to reuse
    head = make_head(causal_base)
    states = row_states(causal_base)
    plain = GradientComputer(causal_base, space, "clm_mlm_head", MASK, 64, head)
    given = GradientComputer(causal_base, space, "clm_mlm_head", MASK, 64, head, states)
    assert given.states is None
    masked, factual, alternative = TEXTS[:2], ["he", "she"], ["she", "he"]
    a = plain.vectors(masked, factual, alternative, ("diff",))["diff"]
    b = given.vectors(masked, factual, alternative, ("diff",))["diff"]
    torch.testing.assert_close(b, a)
    block0 = [
        (off, off + n)
        for name, off, n in zip(space.names, space.offsets(), space.numels, strict=True)
        if ".layers.0." in name
    ]
    assert block0 and all(b[lo:hi].abs().max() > 0 for lo, hi in block0)
    frame = pd.DataFrame({"masked": masked, "factual": factual, "alternative": alternative})
    frame["factual_class"] = factual
    torch.testing.assert_close(importance(given, frame, "diff"), importance(plain, frame, "diff"))


def test_saved_states_read_back_exactly_and_the_bytes_repeat(causal_base, tmp_path):
    states = row_states(causal_base)
    save_row_states(tmp_path / "a.safetensors", states)
    save_row_states(tmp_path / "b.safetensors", states)
    assert (tmp_path / "a.safetensors").read_bytes() == (tmp_path / "b.safetensors").read_bytes()
    back = load_row_states(tmp_path / "a.safetensors")
    assert back.first == states.first and back.texts == states.texts and back.ids == states.ids
    for x, y in zip(back.states, states.states, strict=True):
        assert torch.equal(x, y)
    save_row_states(tmp_path / "none.safetensors", None, "objective mlm")
    assert load_row_states(tmp_path / "none.safetensors") is None


def test_states_made_for_other_rows_or_tokens_are_an_error(causal_base, tmp_path):
    tok = causal_base.tokenizer
    states = row_states(causal_base, TEXTS[:2])
    with pytest.raises(GradiendError, match="lower_states"):  # a row it has no states for
        build_masked_batch(tok, [EX3], MASK, 64, 3, None, states)
    with pytest.raises(GradiendError, match="lower_states"):  # the same text, cut shorter now
        build_masked_batch(tok, [EX1], MASK, 6, 3, None, states)
    bogus = tmp_path / "other.safetensors"
    from gradiend_core.io import save_tensors

    save_tensors(bogus, {"x": torch.zeros(1)})
    with pytest.raises(GradiendError, match="not a lower_states file"):
        load_row_states(bogus)


def test_a_model_that_transforms_inputs_embeds_gets_no_states(causal_base):
    """GPT-2 adds position embeddings to ``inputs_embeds``: an upper-only pass from recorded
    states is not a full pass, so none are stored (consumers run every block)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from gradiend_core.base_model import BaseModel

    tok = causal_base.tokenizer
    config = GPT2Config(
        vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=64, pad_token_id=0
    )
    torch.manual_seed(0)
    gpt2 = BaseModel(GPT2LMHeadModel(config).eval(), tok, "causal", torch.device("cpu"))
    assert row_states(gpt2) is None
    assert row_states(causal_base) is not None  # the same texts on Llama are exact


def test_the_stage_stores_states_within_the_size_cap_and_none_above_it(causal_base):
    """``stored_row_states``: the size is one hidden vector per token of each distinct row (counted
    here from the batch the consumers build), states are stored at a cap of exactly that size,
    and above it none are, with a reason that names the param; θ from block 0 gets none."""
    from types import SimpleNamespace

    from gradiend_core.lower_states import states_nbytes, stored_row_states

    model, tok = causal_base.model, causal_base.tokenizer
    batch = build_masked_batch(tok, TEXTS, MASK, 64, 3)
    hidden = model.config.hidden_size
    expected = int(batch.sequences.lengths.sum()) * hidden * 4  # float32
    assert states_nbytes(model, tok, [*TEXTS, EX1], MASK, 64, 3) == expected
    head = make_head(causal_base)
    space = full_space(causal_base, first_layer=1)
    for cap_gb, stored in ((expected / 1e9, True), (expected / 1e9 * 0.999, False), (0, False)):
        gradient = SimpleNamespace(max_length=64, pooling_length=3, lower_states_max_gb=cap_gb)
        states, reason = stored_row_states(
            model, tok, TEXTS, MASK, gradient, head.mask_embedding, space
        )
        assert (states is not None) == stored
        if stored:
            assert reason == "" and states.first == 1 and len(states.ids) == len(TEXTS)
        else:
            assert "gradient.lower_states_max_gb" in reason
    gradient = SimpleNamespace(max_length=64, pooling_length=3, lower_states_max_gb=4)
    states, reason = stored_row_states(
        model, tok, TEXTS, MASK, gradient, head.mask_embedding, full_space(causal_base)
    )
    assert states is None and "below the transformer blocks" in reason
