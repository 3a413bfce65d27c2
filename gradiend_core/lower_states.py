"""Hidden states entering θ's lowest block, computed once for every masked row (docs/method.md
§2.6).

The base model is frozen, so for objective ``clm_mlm_head`` the hidden states entering block L
(the lowest block the ``gradient`` params let θ touch) are a fixed function of each masked row's
tokens. Stage ``lower_states`` runs blocks 0..L-1 once over every row of data/examples.parquet and
stores each row's states; the MLM head's features, pre-pruning and the gradient vectors then run
only blocks L.. (``upper_blocks_only``) on them, instead of each stage running the lower blocks
again (with the default last-ten-of-thirty blocks, two thirds of every forward pass).

Exactness: a row's states do not depend on the other rows of its batch except through float
rounding (packed sequences never see each other), so a consumer's pass equals a full pass up to
rounding (``tests/test_lower_states.py``). The stage checks once, on its first batch, that an
upper-only pass from the recorded states equals a full pass bit for bit; an architecture that
transforms ``inputs_embeds`` (GPT-2 adds position embeddings) fails that check, and the stage
writes a record without states, so every consumer runs full passes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gradiend_core.block_cache import block_list, first_edited_block
from gradiend_core.errors import GradiendError
from gradiend_core.io import load_tensors, save_tensors
from gradiend_core.tokens import SequenceBatch

METADATA_KEY = "lower_states"
BATCH_SIZE = 32  # rows per pass of the stage (no graph is kept, so larger batches cost little)


@dataclass(frozen=True)
class RowStates:
    """Per masked text: its token ids (mask placeholders included) and the (T, H) hidden states
    entering block ``first``."""

    first: int
    texts: dict[str, int]  # text -> position in ``ids`` / ``states``
    ids: list[list[int]]
    states: list[torch.Tensor]

    def layout(self, texts: list[str], ids: list[list[int]], batch: SequenceBatch) -> torch.Tensor:
        """(B, T, H): the states of ``texts`` laid out like ``batch`` (packed or left-padded;
        padding positions hold zeros, which no kept position attends to). A text whose stored
        ids differ from ``ids`` (other data, tokenizer or params) is a one-line error."""
        width = self.states[0].shape[-1]
        rows, length = batch.input_ids.shape
        out = torch.zeros(rows * length, width, dtype=self.states[0].dtype)
        starts, lengths = batch.flat_starts.tolist(), batch.lengths.tolist()
        for text, row_ids, start, n in zip(texts, ids, starts, lengths, strict=True):
            at = self.texts.get(text)
            if at is None or self.ids[at] != row_ids:
                raise GradiendError(
                    f"models/lower_states: no states for the row {text[:60]!r} as it is tokenized"
                    " now (made for other data, model or gradient params); rerun 'dvc repro'"
                    " (stage lower_states)."
                )
            out[start : start + n] = self.states[at]
        return out.view(rows, length, width)


class _Stop(Exception):
    """Ends a pass once block ``first`` has its input (nothing above it is needed)."""


def states_block(space) -> int | None:
    """The block whose input is stored: θ's lowest block (``first_edited_block`` of the full,
    unpruned θ, so it lies at or below every pair's pruned θ), or None when θ starts below the
    blocks (nothing to reuse)."""
    first = first_edited_block(space)
    return first if first else None


@torch.no_grad()
def record_states(
    model: nn.Module, batch, mask_embedding: torch.Tensor, first: int
) -> torch.Tensor:
    """(B·T, H): the hidden states entering block ``first`` for a ``MaskedBatch``; the blocks
    from ``first`` on do not run."""
    from gradiend_core.mlm_head import pooled_mask_states

    blocks = block_list(model)[2]
    seen = []

    def hook(_module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        seen.append(hidden.detach().clone())
        raise _Stop

    handle = blocks[first].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        pooled_mask_states(model, batch, mask_embedding, 1)
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen[0].reshape(-1, seen[0].shape[-1])


def compute_row_states(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    mask: str,
    max_length: int,
    pooling_length: int,
    mask_embedding: torch.Tensor,
    first: int,
    batch_size: int = BATCH_SIZE,
) -> RowStates | None:
    """The states of every distinct text, or None when an upper-only pass from recorded states
    is not bit-identical to a full pass on this model (checked on the first batch)."""
    from gradiend_core.mlm_head import build_masked_batch, pooled_mask_states
    from gradiend_core.runtime import progress

    unique = list(dict.fromkeys(texts))
    ids, states = [], []
    for start in progress(range(0, len(unique), batch_size), desc="lower-block states"):
        chunk = unique[start : start + batch_size]
        batch = build_masked_batch(tokenizer, chunk, mask, max_length, pooling_length, model)
        flat = record_states(model, batch, mask_embedding, first)
        seq = batch.sequences
        for s, n in zip(seq.flat_starts.tolist(), seq.lengths.tolist(), strict=True):
            ids.append(seq.input_ids.reshape(-1)[s : s + n].tolist())
            states.append(flat[s : s + n].cpu().clone())
        if start == 0:
            with torch.no_grad():
                full = pooled_mask_states(model, batch, mask_embedding, pooling_length)
                hidden = flat.view(*seq.input_ids.shape, -1)
                upper = pooled_mask_states(
                    model, batch, mask_embedding, pooling_length, (first, hidden)
                )
            if not torch.equal(full, upper):
                return None
    return RowStates(first, {t: i for i, t in enumerate(unique)}, ids, states)


def states_nbytes(
    model: nn.Module, tokenizer, texts: list[str], mask: str, max_length: int, pooling_length: int
) -> int:
    """Bytes the states of the distinct ``texts`` take: one hidden vector in the model's dtype per
    token of each row as ``build_masked_batch`` tokenizes it (nothing runs through the model)."""
    from gradiend_core.tokens import tokenize_with_masks

    tokens = sum(
        len(tokenize_with_masks(tokenizer, t, mask, max_length, pooling_length)[0])
        for t in dict.fromkeys(texts)
    )
    weight = model.get_input_embeddings().weight
    return tokens * weight.shape[-1] * weight.element_size()


def stored_row_states(
    model: nn.Module, tokenizer, texts: list[str], mask: str, gradient, mask_embedding, space
) -> tuple[RowStates | None, str]:
    """What stage ``lower_states`` stores for ``clm_mlm_head``: the rows' states entering θ's
    lowest block, or None and the reason (θ reaches below the blocks; the states would exceed
    ``gradient.lower_states_max_gb``; an upper-block pass from them is not exact)."""
    first = states_block(space)
    if first is None:
        return None, "θ reaches below the transformer blocks"
    size = states_nbytes(
        model, tokenizer, texts, mask, gradient.max_length, gradient.pooling_length
    )
    if size > gradient.lower_states_max_gb * 1e9:
        return None, (
            f"the states would take {size / 1e9:.3g} GB, more than gradient.lower_states_max_gb ="
            f" {gradient.lower_states_max_gb:g}; raise it to reuse them"
        )
    states = compute_row_states(
        model,
        tokenizer,
        texts,
        mask,
        gradient.max_length,
        gradient.pooling_length,
        mask_embedding,
        first,
    )
    if states is None:
        return None, "an upper-block pass from recorded states is not exact on this model"
    return states, ""


def save_row_states(path: str | Path, states: RowStates | None, reason: str = "") -> None:
    """One safetensors file: every row's ids and states end to end, their lengths, and (one JSON
    object under one metadata key) ``first`` and the texts in order. Without states (``None``)
    the file holds only the reason, and consumers run full passes."""
    if states is None:
        meta = {"first": None, "reason": reason, "texts": []}
        tensors = {"lengths": torch.zeros(0, dtype=torch.int64)}
    else:
        order = sorted(states.texts, key=states.texts.get)
        meta = {"first": states.first, "reason": "", "texts": order}
        tensors = {
            "ids": torch.tensor([i for row in states.ids for i in row], dtype=torch.int64),
            "lengths": torch.tensor([len(row) for row in states.ids], dtype=torch.int64),
            "states": torch.cat(states.states),
        }
    save_tensors(path, tensors, {METADATA_KEY: json.dumps(meta, sort_keys=True)})


def load_row_states(path: str | Path) -> RowStates | None:
    """The stored states, or None when the stage stored none (other objective, or a model whose
    upper-only passes are not exact)."""
    from safetensors import safe_open

    tensors = load_tensors(path, "hidden states entering θ's lowest block (stage lower_states)")
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads((handle.metadata() or {}).get(METADATA_KEY, "null") or "null")
    if not isinstance(meta, dict) or "first" not in meta:
        raise GradiendError(
            f"{path}: not a lower_states file (no '{METADATA_KEY}' metadata); rerun 'dvc repro'"
            " (stage lower_states)."
        )
    if meta["first"] is None:
        return None
    lengths = tensors["lengths"].tolist()
    ids = [row.tolist() for row in tensors["ids"].split(lengths)]
    states = list(tensors["states"].split(lengths))
    return RowStates(meta["first"], {t: i for i, t in enumerate(meta["texts"])}, ids, states)
