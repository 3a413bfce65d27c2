"""Reuse of the frozen lower blocks' output across weight edits (docs/method.md §7.3).

θ usually covers only the top blocks of the base model (the default: the last ten). An edit
θ + η·dec(f) leaves every block below the first edited block L untouched, so for a fixed input
batch the hidden states entering block L are the same at every grid point. ``LowerBlockCache``
records them during the first, unedited pass and afterwards runs only blocks L.. (plus the final
norm and the head), feeding the recorded states as ``inputs_embeds``.

Exactness: the upper blocks receive bit-identical inputs, attention masks and positions, so the
outputs are bit-identical to a full pass. The cache checks this once on its first batch (a full
pass and an upper-only pass of the unedited model must agree bit for bit) and falls back to full
passes when they do not — e.g. for architectures that add position embeddings to
``inputs_embeds`` (GPT-2) or that preprocess them.
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager

import torch
from torch import nn

from gradiend_core.base_model import ParamSpace, component_of, layer_of

LOG = logging.getLogger(__name__)

BLOCK_LIST = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)$")


def block_list(model: nn.Module) -> tuple[nn.Module, str, nn.ModuleList] | None:
    """(parent module, attribute name, the ModuleList of transformer blocks), or None."""
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and BLOCK_LIST.search(name):
            parent_name, _, attr = name.rpartition(".")
            return model.get_submodule(parent_name), attr, module
    return None


def first_edited_block(space: ParamSpace) -> int | None:
    """The lowest block holding a kept coordinate of θ, or None when θ reaches below the blocks
    (an embedding, or a tensor outside the blocks other than a norm) and nothing can be reused."""
    blocks = []
    for name, kept in space.share_per_tensor().items():
        if kept == 0:
            continue
        layer = layer_of(name)
        if layer is None:
            if component_of(name) != "norm":  # the final norm sits above every block
                return None
            continue
        blocks.append(layer)
    return min(blocks) if blocks else None


@contextmanager
def upper_blocks_only(model: nn.Module, first: int):
    """Temporarily make the model's block list start at block ``first``.

    Models that pick each block's attention (sliding window or full, as Gemma 3 and Qwen 3 do) by
    its position in the list, ``config.layer_types[i]``, get that list shifted the same way, so
    block ``first`` keeps its own kind of attention."""
    found = block_list(model)
    if found is None:
        raise RuntimeError("no transformer block list found")
    parent, attr, blocks = found
    config = getattr(parent, "config", None)
    types = getattr(config, "layer_types", None)
    shift_types = isinstance(types, list | tuple) and len(types) == len(blocks)
    setattr(parent, attr, nn.ModuleList(list(blocks)[first:]))
    if shift_types:
        config.layer_types = types[first:]
    try:
        yield
    finally:
        setattr(parent, attr, blocks)
        if shift_types:
            config.layer_types = types


class LowerBlockCache:
    """Hidden states entering block ``first`` per fixed batch, recorded on the unedited model.

    Use one cache per sequence of measurements of *one* model whose first measurement is
    unedited (the decoder grid's base point). ``logits(model, key, **inputs)`` returns what
    ``model(**inputs).logits`` would.
    """

    def __init__(self, model: nn.Module, first: int | None):
        found = block_list(model)
        self.first = first
        self.enabled = bool(first) and found is not None and first < len(found[2])
        self.states: dict[tuple, torch.Tensor] = {}
        self.verified: set = set()  # kinds of call (key[0]) checked bit for bit
        self.recorded_only = False

    @classmethod
    def recorded(
        cls, model: nn.Module, first: int, states: dict[tuple, torch.Tensor]
    ) -> LowerBlockCache:
        """A cache seeded with states an earlier, verified cache recorded at block ``first`` on the
        same unedited model and inputs (stage decoder_base, ``decoder_eval.DecoderReference``):
        every call runs only blocks ``first``.., also the first one, so the model may already be
        edited. A key it has no state for is an error, never a recording of an edited model."""
        cache = cls(model, first)
        if not cache.enabled or not states:
            raise ValueError(f"no recorded states at block {first} for this model")
        cache.states = dict(states)
        cache.verified = {key[0] for key in states}
        cache.recorded_only = True
        return cache

    def _record(self, model: nn.Module, key: tuple, inputs: dict) -> torch.Tensor:
        blocks = block_list(model)[2]

        def hook(_module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            self.states[key] = hidden.detach().clone()

        handle = blocks[self.first].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            return model(**inputs, use_cache=False).logits
        finally:
            handle.remove()

    def _upper(self, model: nn.Module, key: tuple, inputs: dict) -> torch.Tensor:
        rest = {k: v for k, v in inputs.items() if k != "input_ids"}
        with upper_blocks_only(model, self.first):
            return model(inputs_embeds=self.states[key], **rest, use_cache=False).logits

    @torch.no_grad()
    def logits(self, model: nn.Module, key: tuple, **inputs) -> torch.Tensor:
        """Logits of ``model`` on ``inputs``; the lower blocks run only the first time per key."""
        if not self.enabled:
            return model(**inputs, use_cache=False).logits
        if key not in self.states:
            if self.recorded_only:
                raise KeyError(f"no recorded lower-block state for batch {key}")
            full = self._record(model, key, inputs)
            if key[0] not in self.verified:
                self.verified.add(key[0])
                if not torch.equal(self._upper(model, key, inputs), full):
                    LOG.warning("upper-block reuse is not exact for this model; using full passes")
                    self.enabled = False
            return full
        return self._upper(model, key, inputs)
