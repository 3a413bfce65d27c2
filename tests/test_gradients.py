"""Objectives -> flat gradient vectors (docs/method.md §2-§3), each pinned against a hand-built
autograd reference.

The fixtures' tokenizers are word-level, so the references build token ids from the words of the
text directly instead of going through the code under test: ``gpt2_pieces`` for the byte-level
causal and RoBERTa fixtures (first word bare, later words 'Ġ'-prefixed, so " he" is 'Ġhe', not
'he'), ``str.split()`` for the BERT fixture.
"""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from conftest import SPACE, gpt2_pieces
from torch import nn

from gradiend_core.base_model import select_param_space
from gradiend_core.errors import GradiendError
from gradiend_core.feature import ClassPair
from gradiend_core.gradients import (
    GradientComputer,
    needed_kinds,
)
from gradiend_core.mlm_head import (
    MlmHead,
    build_masked_batch,
    fit_mlm_head,
    pooled_mask_states,
    require_single_token_targets,
)
from gradiend_core.segments import Segments
from gradiend_core.tokens import (
    causal_prefix_ids,
    pack,
    pad_left,
    prefix_before_mask,
    require_single_token,
    single_token_id,
    tokenize_with_masks,
)

MASK = "[MASK]"
EX1 = "My brother said that [MASK] was very tired after the long day at work ."
EX2 = "The doctor told me that [MASK] would come to the party later tonight ."
EX3 = "The old man believed that [MASK] had found the lost keys in the garden ."
ATOL = 1e-5


def word_ids(tokenizer, words: list[str]) -> list[int]:
    ids = tokenizer.convert_tokens_to_ids(words)
    assert tokenizer.unk_token_id not in ids, words
    return ids


def space_tensors(model: nn.Module, space) -> list[torch.Tensor]:
    named = dict(model.named_parameters())
    tensors = [named[n] for n in space.names]
    for t in tensors:
        t.requires_grad_(True)
    return tensors


def flat_grad(loss: torch.Tensor, tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, tensors)])


def ref_clm_next_token(base, space, masked: str, word: str) -> torch.Tensor:
    """CE of the logits at the last prefix token against the token id of ``" " + word`` (unpadded,
    batch of one)."""
    prefix = gpt2_pieces(masked.split(MASK)[0])
    ids = torch.tensor([word_ids(base.tokenizer, prefix)])
    target = torch.tensor(word_ids(base.tokenizer, [SPACE + word]))
    logits = base.model(input_ids=ids).logits[:, -1, :]
    return flat_grad(nn.functional.cross_entropy(logits, target), space_tensors(base.model, space))


def masked_lm_pieces(tok, masked: str) -> tuple[list[str], str]:
    """Word pieces of a masked fixture text and the piece of a target word, by hand: BERT's
    whitespace pieces, or RoBERTa's byte-level pieces, where '<mask>' swallows the space before it
    and the word it stands for is the 'Ġ' entry."""
    if tok.mask_token == "[MASK]":
        return masked.split(), ""
    pieces = gpt2_pieces(masked)
    return [tok.mask_token if p in (MASK, SPACE + MASK) else p for p in pieces], SPACE


def ref_mlm(base, space, masked: str, word: str) -> torch.Tensor:
    """CE at every mask position of ``<cls> pieces <sep>`` (mean over the masks)."""
    tok = base.tokenizer
    pieces, mark = masked_lm_pieces(tok, masked)
    ids = [tok.cls_token_id] + word_ids(tok, pieces) + [tok.sep_token_id]
    positions = [i for i, t in enumerate(ids) if t == tok.mask_token_id]
    assert positions
    logits = base.model(input_ids=torch.tensor([ids])).logits[0, positions]
    target = torch.tensor(word_ids(tok, [mark + word]) * len(positions))
    return flat_grad(nn.functional.cross_entropy(logits, target), space_tensors(base.model, space))


def full_space(base, exclude_embeddings: bool = True, first_layer=None):
    gradient = SimpleNamespace(
        include=["*"],
        exclude=[],
        exclude_embeddings=exclude_embeddings,
        first_layer=first_layer,
        last_layer=None,
    )
    return select_param_space(base.model, gradient)


# ---- clm_next_token ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exclude_embeddings", "first_layer"), [(True, None), (False, None), (True, 1)]
)
def test_clm_next_token_single_example_matches_reference(
    causal_base, exclude_embeddings, first_layer
):
    space = full_space(causal_base, exclude_embeddings, first_layer)
    if not exclude_embeddings:  # tied input/output matrix: once, under the embedding name
        assert "model.embed_tokens.weight" in space.names and not any(
            n.startswith("lm_head") for n in space.names
        )
    if first_layer == 1:
        assert not any(".layers.0." in n for n in space.names)
    expected_f = ref_clm_next_token(causal_base, space, EX1, "he")
    expected_a = ref_clm_next_token(causal_base, space, EX1, "she")
    computer = GradientComputer(causal_base, space, "clm_next_token", MASK, max_length=64)
    got = computer.vectors([EX1], ["he"], ["she"], ("factual", "alternative", "diff"))
    assert got["factual"].shape == (space.full_size,)
    assert got["factual"].abs().max() > 0
    torch.testing.assert_close(got["factual"], expected_f, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(got["alternative"], expected_a, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(got["diff"], expected_f - expected_a, atol=ATOL, rtol=1e-4)
    assert not torch.allclose(got["factual"], got["alternative"], atol=1e-6)


def test_clm_next_token_only_reads_the_text_before_the_first_mask(causal_base):
    space = full_space(causal_base)
    computer = GradientComputer(causal_base, space, "clm_next_token", MASK, max_length=64)
    a = computer.vectors(
        ["My brother said that [MASK] was tired ."], ["he"], ["she"], ("factual",)
    )["factual"]
    b = computer.vectors(
        ["My brother said that   [MASK] liked the river and [MASK] walked ."],
        ["he"],
        ["she"],
        ("factual",),
    )["factual"]
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_clm_next_token_left_padded_batch_is_the_mean_of_single_examples(causal_base):
    space = full_space(causal_base)
    computer = GradientComputer(causal_base, space, "clm_next_token", MASK, max_length=64)
    short = "My friend said [MASK] was very tired after the long day at work ."
    assert len(short.split(MASK)[0].split()) != len(EX2.split(MASK)[0].split())
    kinds = ("factual", "alternative", "diff")
    one = computer.vectors([short], ["he"], ["she"], kinds)
    two = computer.vectors([EX2], ["she"], ["he"], kinds)
    batch = computer.vectors([short, EX2], ["he", "she"], ["she", "he"], kinds)
    for kind in kinds:
        torch.testing.assert_close(batch[kind], (one[kind] + two[kind]) / 2, atol=ATOL, rtol=1e-4)
    # Independent reference for the batch: mean of the two hand-built single-example gradients.
    ref = (
        ref_clm_next_token(causal_base, space, short, "he")
        + ref_clm_next_token(causal_base, space, EX2, "she")
    ) / 2
    torch.testing.assert_close(batch["factual"], ref, atol=ATOL, rtol=1e-4)


def test_clm_next_token_pruned_space_returns_exactly_the_kept_coordinates(causal_base):
    space = full_space(causal_base)
    computer = GradientComputer(causal_base, space, "clm_next_token", MASK, max_length=64)
    full = computer.vectors([EX1, EX3], ["he", "he"], ["she", "she"], ("factual", "diff"))
    gen = torch.Generator().manual_seed(0)
    kept = torch.randperm(space.full_size, generator=gen)[:777]
    kept = torch.cat([kept, torch.tensor([0, space.full_size - 1])])  # both ends of the vector
    pruned_space = space.with_kept(kept)
    assert pruned_space.size == kept.unique().numel()
    pruned = GradientComputer(causal_base, pruned_space, "clm_next_token", MASK, max_length=64)
    part = pruned.vectors([EX1, EX3], ["he", "he"], ["she", "she"], ("factual", "diff"))
    order = kept.unique().sort().values
    for kind in ("factual", "diff"):
        assert part[kind].shape == (order.numel(),)
        torch.testing.assert_close(part[kind], full[kind][order], atol=0, rtol=0)


def test_unflattened_vectors_are_the_flat_ones_cut_at_the_tensors(causal_base):
    """``flat=False``: one piece per θ tensor (whole tensors as views of autograd's gradient, a
    pruned tensor's kept coordinates gathered), equal to the flat vector to the bit."""
    space = full_space(causal_base)
    gen = torch.Generator().manual_seed(1)
    pruned_space = space.with_kept(torch.randperm(space.full_size, generator=gen)[:500])
    kinds = ("alternative", "diff")
    for sp in (space, pruned_space):
        computer = GradientComputer(causal_base, sp, "clm_next_token", MASK, max_length=64)
        flat = computer.vectors([EX1, EX3], ["he", "he"], ["she", "she"], kinds)
        assert computer.whole_tensors == (sp is space)
        pieces = computer.vectors([EX1, EX3], ["he", "he"], ["she", "she"], kinds, flat=False)
        for kind in kinds:
            assert isinstance(pieces[kind], Segments)
            assert len(pieces[kind]) == len(sp.names)
            assert torch.equal(torch.cat(list(pieces[kind])), flat[kind])


def test_only_the_space_tensors_require_grad(causal_base):
    space = full_space(causal_base, first_layer=1)
    GradientComputer(causal_base, space, "clm_next_token", MASK, max_length=64)
    grad_names = {n for n, p in causal_base.model.named_parameters() if p.requires_grad}
    assert grad_names == set(space.names)


def test_nan_weight_is_reported_with_the_example(causal_base):
    space = full_space(causal_base)
    with torch.no_grad():
        causal_base.model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    computer = GradientComputer(causal_base, space, "clm_next_token", MASK, max_length=64)
    with pytest.raises(GradiendError) as exc:
        computer.vectors([EX1], ["he"], ["she"], ("factual",), where="train step 3")
    message = str(exc.value)
    assert (
        "train step 3" in message and "My brother said that" in message and "nan" in message.lower()
    )
    assert "\n" not in message


def test_empty_left_context_is_an_error(causal_base):
    computer = GradientComputer(
        causal_base, full_space(causal_base), "clm_next_token", MASK, max_length=64
    )
    with pytest.raises(GradiendError, match="left context"):
        computer.vectors(["[MASK] was very tired ."], ["he"], ["she"], ("factual",))


# ---- mlm -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "backbone"), [("bert_base", "bert."), ("roberta_base", "roberta.")]
)
def test_mlm_single_example_matches_reference(request, fixture, backbone):
    """BERT's whitespace pieces and RoBERTa's byte-level pieces: for RoBERTa the mask is labelled
    with 'Ġhe' (the word after a space), not with the sentence-initial entry 'he'."""
    base = request.getfixturevalue(fixture)
    space = full_space(base)
    assert all(n.startswith(backbone) for n in space.names)  # the MLM head is never part of θ
    computer = GradientComputer(base, space, "mlm", MASK, max_length=64)
    got = computer.vectors([EX1], ["he"], ["she"], ("factual", "alternative", "diff"))
    expected_f, expected_a = (
        ref_mlm(base, space, EX1, "he"),
        ref_mlm(base, space, EX1, "she"),
    )
    torch.testing.assert_close(got["factual"], expected_f, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(got["alternative"], expected_a, atol=ATOL, rtol=1e-4)
    torch.testing.assert_close(got["diff"], expected_f - expected_a, atol=ATOL, rtol=1e-4)


def test_mlm_two_masks_and_padded_batch(bert_base):
    space = full_space(bert_base)
    computer = GradientComputer(bert_base, space, "mlm", MASK, max_length=64)
    two_masks = "My friend said [MASK] was tired and [MASK] walked ."
    got = computer.vectors([two_masks], ["she"], ["he"], ("factual",))["factual"]
    torch.testing.assert_close(
        got, ref_mlm(bert_base, space, two_masks, "she"), atol=ATOL, rtol=1e-4
    )
    # A right-padded batch of two one-mask rows of different lengths: the mean over the two masks.
    short = "My friend said [MASK] was tired ."
    batch = computer.vectors([short, EX2], ["he", "she"], ["she", "he"], ("factual",))["factual"]
    ref = (ref_mlm(bert_base, space, short, "he") + ref_mlm(bert_base, space, EX2, "she")) / 2
    torch.testing.assert_close(batch, ref, atol=ATOL, rtol=1e-4)


def test_mlm_mask_lost_to_truncation_is_an_error(bert_base):
    computer = GradientComputer(bert_base, full_space(bert_base), "mlm", MASK, max_length=6)
    with pytest.raises(GradiendError, match="max_length"):
        computer.vectors([EX1], ["he"], ["she"], ("factual",))


# ---- clm_mlm_head ------------------------------------------------------------------------------


def make_head(base, pooling_length: int = 3, seed: int = 1) -> MlmHead:
    mean_embedding = base.model.get_input_embeddings().weight.detach().mean(0)
    head = MlmHead(base.model.config.hidden_size, ["he", "she"], pooling_length, mean_embedding)
    torch.manual_seed(seed)
    with torch.no_grad():
        head.classifier.weight.normal_(0.0, 0.5)
        head.classifier.bias.normal_(0.0, 0.5)
    return head


def head_pieces(masked: str) -> list[str]:
    """Byte-level pieces of a masked fixture text as the MLM head reads it (§2.5), by hand: the
    text before the first mask right-stripped, one ``MASK`` per placeholder, then the following
    text with its leading space. Text between two masks is right-stripped too, so no lone 'Ġ'
    piece stands before a mask."""
    first, *rest = masked.split(MASK)
    pieces = gpt2_pieces(first) + [MASK]
    for i, text in enumerate(rest):
        pieces += [SPACE + w for w in text.split()]
        if i < len(rest) - 1:
            pieces += [MASK]
    return pieces


def manual_pooled(base, masked: str, pooling_length: int) -> torch.Tensor:
    """Mean of the last hidden states at the mask and the next P-1 positions (one unpadded row, grad
    kept)."""
    tok = base.tokenizer
    pieces = head_pieces(masked)
    positions = [i for i, w in enumerate(pieces) if w == MASK]
    ids = torch.tensor([word_ids(tok, [tok.pad_token if w == MASK else w for w in pieces])])
    embeds = base.model.model.embed_tokens(ids).clone()
    embeds[0, positions] = base.model.model.embed_tokens.weight.detach().mean(0)
    hidden = base.model.model(inputs_embeds=embeds).last_hidden_state[0]
    return torch.stack([hidden[p : p + pooling_length].mean(0) for p in positions])


def ref_head(base, space, head: MlmHead, masked: str, word: str) -> torch.Tensor:
    """CE of the head's logits on the hand-pooled states of every mask against ``word``'s label."""
    logits = head.classifier(manual_pooled(base, masked, head.pooling_length))
    target = torch.tensor([["he", "she"].index(word.lower())] * logits.shape[0])
    return flat_grad(nn.functional.cross_entropy(logits, target), space_tensors(base.model, space))


def test_clm_mlm_head_matches_reference(causal_base):
    space = full_space(causal_base)
    head = make_head(causal_base)
    computer = GradientComputer(causal_base, space, "clm_mlm_head", MASK, max_length=64, head=head)
    for masked, factual, alternative in (
        (EX1, "he", "she"),
        ("My friend said [MASK] was tired and [MASK] walked .", "She", "He"),
    ):
        got = computer.vectors(
            [masked], [factual], [alternative], ("factual", "alternative", "diff")
        )
        expected_f = ref_head(causal_base, space, head, masked, factual)
        expected_a = ref_head(causal_base, space, head, masked, alternative)
        assert expected_f.abs().max() > 0
        torch.testing.assert_close(got["factual"], expected_f, atol=ATOL, rtol=1e-4)
        torch.testing.assert_close(got["alternative"], expected_a, atol=ATOL, rtol=1e-4)
        torch.testing.assert_close(got["diff"], expected_f - expected_a, atol=ATOL, rtol=1e-4)


def test_pooled_mask_states_pools_exactly_the_mask_and_the_next_positions(causal_base):
    tok, model = causal_base.tokenizer, causal_base.model
    pooling = 3
    texts = [
        "My friend said [MASK] was tired .",
        "The old man believed that [MASK] had found the lost keys in the [MASK] .",
    ]
    head = make_head(causal_base, pooling)
    batch = build_masked_batch(tok, texts, MASK, 64, pooling)  # no model: left-padded
    seq = batch.sequences
    # Two rows, left padded; masks at the right places. Row 0 is 6 tokens (My Ġfriend Ġsaid <M>
    # Ġwas Ġtired): its 'Ġ.' lies past the mask's 3-token window, which no causal state reads,
    # and is dropped. Row 1 is 15 (The Ġold Ġman Ġbelieved Ġthat <M> Ġhad Ġfound Ġthe Ġlost Ġkeys
    # Ġin Ġthe <M> Ġ.): the text before the second mask is right-stripped, no lone 'Ġ' piece.
    pad = tok.pad_token_id
    assert seq.input_ids[0].tolist() == [pad] * 9 + word_ids(
        tok, ["My", "Ġfriend", "Ġsaid", "<pad>", "Ġwas", "Ġtired"]
    )
    assert seq.input_ids[1, 11:].tolist() == word_ids(tok, ["Ġin", "Ġthe", "<pad>", "Ġ."])
    assert batch.mask_rows.tolist() == [0, 1, 1]
    width = seq.input_ids.shape[1]
    assert width == 15
    assert seq.attention_mask[0].tolist() == [0] * 9 + [1] * 6
    rows, cols = [0, 1, 1], [9 + 3, 5, 13]
    assert batch.mask_flat.tolist() == [r * width + c for r, c in zip(rows, cols, strict=True)]
    assert batch.sequence_end.tolist() == [15, 30, 30]
    with torch.no_grad():
        got = pooled_mask_states(model, batch, head.mask_embedding, pooling)
        embeds = model.get_input_embeddings()(seq.input_ids)
        embeds[rows, cols] = head.mask_embedding
        hidden = model.model(
            inputs_embeds=embeds,
            attention_mask=seq.attention_mask,
            position_ids=seq.position_ids,
        ).last_hidden_state
        manual = torch.stack(
            [hidden[r, c : c + pooling].mean(0) for r, c in zip(rows, cols, strict=True)]
        )
        assert got.shape == (3, model.config.hidden_size)
        torch.testing.assert_close(got, manual, atol=1e-6, rtol=1e-5)
        # The last mask has only one following token ('.'): the window is cut at the end of the row.
        torch.testing.assert_close(got[2], hidden[1, -2:].mean(0), atol=1e-6, rtol=1e-5)
        # Neither padding nor the dropped tail changes the result: each whole text alone,
        # unpadded, gives the same pooled states.
        alone = torch.cat([manual_pooled(causal_base, t, pooling) for t in texts])
        torch.testing.assert_close(got, alone, atol=ATOL, rtol=1e-4)
        # A different window gives a different result (the pooling length is really used).
        assert not torch.allclose(
            got, pooled_mask_states(model, batch, head.mask_embedding, 1), atol=1e-4
        )


def test_masked_rows_end_with_the_last_window_and_then_fit_max_length(causal_base):
    """Tokens past the last mask's window are dropped (no causal state that is read sees them);
    a row still longer than max_length keeps the first mask's window and loses its start."""
    tok = causal_base.tokenizer
    words = ["The", "Ġold", "Ġman", "Ġbelieved", "Ġthat", "<pad>", "Ġhad", "Ġfound"]
    ids, masks = tokenize_with_masks(tok, EX3, MASK, 64, 3)  # mask at 5: keeps 5, 6, 7
    assert (ids, masks) == (word_ids(tok, words), [5])
    ids, masks = tokenize_with_masks(tok, EX3, MASK, 6, 3)  # 8 > 6: cut 2 at the start
    assert (ids, masks) == (word_ids(tok, words[2:]), [3])
    two = "The old man believed that [MASK] had found the lost keys in the [MASK] ."
    ids, masks = tokenize_with_masks(tok, two, MASK, 64, 1)  # the last mask ends the row
    assert masks == [5, 13] and len(ids) == 14 and ids[-1] == tok.pad_token_id
    ids, masks = tokenize_with_masks(tok, two, MASK, 64, 3)  # only '.' follows: nothing cut
    assert masks == [5, 13] and len(ids) == 15


def test_a_batch_knows_the_row_of_every_token_and_each_rows_last_position():
    packed = pack([[5, 6], [7, 8, 9]])
    assert packed.row_of_token().tolist() == [0, 0, 1, 1, 1]
    assert packed.last_token_keep("cpu").tolist() == [1, 4]  # flat index of each row's end
    padded = pad_left([[5, 6], [7, 8, 9]], pad_id=0)  # (2, 3): [0, 5, 6], [7, 8, 9]
    assert padded.row_of_token().tolist() == [0, 0, 0, 1, 1, 1]
    assert padded.last_token_keep("cpu") == 1  # the last column of every row


def test_packed_masked_batch_keeps_texts_apart_and_cuts_windows_at_their_end(causal_base):
    """With the model given, the texts are packed end to end; the long text goes first, so its
    last mask's window (mask, '.') would run into the next text without the cut."""
    tok, model = causal_base.tokenizer, causal_base.model
    pooling = 3
    texts = [
        "The old man believed that [MASK] had found the lost keys in the [MASK] .",
        "My friend said [MASK] was tired .",
    ]
    head = make_head(causal_base, pooling)
    batch = build_masked_batch(tok, texts, MASK, 64, pooling, model)
    seq = batch.sequences
    # the short text loses its 'Ġ.' past the window (7 -> 6 tokens)
    assert seq.packed and seq.input_ids.shape == (1, 15 + 6)
    assert seq.position_ids[0].tolist() == list(range(15)) + list(range(6))
    assert batch.mask_rows.tolist() == [0, 0, 1] and batch.mask_flat.tolist() == [5, 13, 15 + 3]
    assert batch.sequence_end.tolist() == [15, 15, 21]
    with torch.no_grad():
        got = pooled_mask_states(model, batch, head.mask_embedding, pooling)
        alone = torch.cat([manual_pooled(causal_base, t, pooling) for t in texts])
    torch.testing.assert_close(got, alone, atol=ATOL, rtol=1e-4)


# ---- targets, objectives, labels -----------------------------------------------------------------


def test_single_token_rules(causal_base, bert_base, roberta_base):
    tok = causal_base.tokenizer
    # The word after a space: 'Ġhe', which the byte-level fixture keeps apart from the bare 'he'.
    he_space, he_bare = word_ids(tok, ["Ġhe", "he"])
    assert he_space != he_bare
    assert single_token_id(tok, "he", "causal") == he_space
    assert single_token_id(tok, "he she", "causal") is None
    assert (
        single_token_id(tok, "HE", "causal") is None
    )  # out of vocabulary: the unk token is not a token of 'he'
    assert single_token_id(bert_base.tokenizer, "SHE", "masked") is None
    with pytest.raises(GradiendError, match="'zyzzyva'"):
        require_single_token(tok, "zyzzyva", "causal")
    # A casing variant that is no token falls back to the lower-case class word.
    computer = GradientComputer(
        causal_base, full_space(causal_base), "clm_next_token", MASK, max_length=64
    )
    assert [computer.target_index(w) for w in ("he", "He", "HE")] == word_ids(
        tok, ["Ġhe", "ĠHe", "Ġhe"]
    )
    # Masked LMs: BERT's whitespace tokenizer has one 'she'; RoBERTa's mask stands for 'Ġshe'.
    bert = bert_base.tokenizer
    assert require_single_token(bert, "she", "masked") == word_ids(bert, ["she"])[0]
    roberta = roberta_base.tokenizer
    she_space, she_bare = word_ids(roberta, ["Ġshe", "she"])
    assert require_single_token(roberta, "she", "masked") == she_space != she_bare
    with pytest.raises(GradiendError) as exc:
        require_single_token(tok, "he she", "causal")
    assert "'he she'" in str(exc.value) and "single token" in str(exc.value)


def test_prefix_before_mask():
    assert prefix_before_mask("a b  [MASK] c [MASK]", MASK) == "a b"
    with pytest.raises(GradiendError):
        prefix_before_mask("no placeholder", MASK)


def test_causal_prefix_ids_are_the_right_stripped_prefix(causal_base):
    """No trailing 'Ġ' (the space belongs to the target 'Ġhe'); the last ``max_length`` kept."""
    tok = causal_base.tokenizer
    masked = "My brother said that [MASK] was tired ."
    assert causal_prefix_ids(tok, masked, MASK, 64) == word_ids(
        tok, ["My", "Ġbrother", "Ġsaid", "Ġthat"]
    )
    assert causal_prefix_ids(tok, masked, MASK, 2) == word_ids(tok, ["Ġsaid", "Ġthat"])


def test_objective_must_fit_the_model(causal_base, bert_base):
    with pytest.raises(GradiendError, match="'mlm' needs a masked LM"):
        GradientComputer(causal_base, full_space(causal_base), "mlm", MASK, max_length=64)
    for objective in ("clm_next_token", "clm_mlm_head"):
        with pytest.raises(GradiendError, match="needs a causal"):
            GradientComputer(
                bert_base,
                full_space(bert_base),
                objective,
                MASK,
                max_length=64,
                head=make_head(causal_base),
            )
    with pytest.raises(GradiendError, match="no trained head"):
        GradientComputer(
            causal_base, full_space(causal_base), "clm_mlm_head", MASK, max_length=64, head=None
        )


def test_head_target_index_is_case_insensitive_and_rejects_unknown_words(causal_base):
    head = make_head(causal_base)
    assert [head.label_index(w) for w in ("he", "He", " SHE ", "she")] == [0, 0, 1, 1]
    with pytest.raises(GradiendError, match="'they'"):
        head.label_index("they")


def test_head_targets_must_be_single_tokens_of_the_causal_model(causal_base):
    tok = causal_base.tokenizer
    require_single_token_targets(tok, {"he": ["he", "He"], "she": ["SHE"]})  # 'SHE' -> 'Ġshe'
    with pytest.raises(GradiendError) as exc:
        require_single_token_targets(tok, {"he": ["he"], "she": ["she was"]})
    assert str(exc.value) == (
        "params.yaml: 'feature.targets' word 'she was' is not a single token for this model (it"
        " splits into ['Ġshe', 'Ġwas']); choose single-token target words."
    )


def head_rows(splits: list[tuple[str, str]]) -> pd.DataFrame:
    """Masked rows of the given (class, split) pairs for fit_mlm_head."""
    return pd.DataFrame(
        {
            "masked": [EX1] * len(splits),
            "factual": [c for c, _ in splits],
            "factual_class": [c for c, _ in splits],
            "split": [s for _, s in splits],
        }
    )


@pytest.mark.parametrize(
    ("targets", "rows", "message"),
    [
        (
            {"he": ["he"], "she": ["she was"]},
            [("he", "train"), ("she", "train"), ("he", "validation"), ("she", "validation")],
            "'feature.targets' word 'she was' is not a single token",
        ),
        (
            {"he": ["he"], "she": ["she"]},
            [("he", "train"), ("she", "train"), ("he", "validation")],
            "class 'she' has no row in split 'validation'",
        ),
    ],
)
def test_fit_mlm_head_rejects_bad_inputs_before_any_work(causal_base, targets, rows, message):
    feature = SimpleNamespace(classes=["he", "she"], targets=targets, mask=MASK)
    gradient = SimpleNamespace(max_length=32, pooling_length=3)
    settings = SimpleNamespace(
        epochs=1, batch_size=2, learning_rate=1e-3, weight_decay=0.0, max_per_class=4, seed=0
    )
    with pytest.raises(GradiendError, match=message):
        fit_mlm_head(
            causal_base.model, causal_base.tokenizer, head_rows(rows), feature, gradient, settings
        )


@pytest.mark.parametrize(
    ("factual_class", "source", "label"),
    [
        ("he", "factual", 1),
        ("she", "factual", -1),
        ("he", "diff", 1),
        ("she", "diff", -1),
        ("he", "alternative", -1),
        ("she", "alternative", 1),
    ],
)
def test_encoder_label_sign_table(factual_class, source, label):
    assert ClassPair("he", "she").label(factual_class, source) == label


def test_needed_kinds_source_first_without_duplicates():
    assert needed_kinds("alternative", "diff") == ("alternative", "diff")
    assert needed_kinds("diff", "diff") == ("diff",)
    assert needed_kinds("factual", "alternative") == ("factual", "alternative")
