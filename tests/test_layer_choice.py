"""θ's block range fits models of any depth (docs/method.md §2.1): the default `first_layer: -10`
means the last ten blocks, or every block of a shallower model, like the slice ``blocks[-10:]``."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from transformers import LlamaConfig, LlamaForCausalLM

from gradiend_core.base_model import layer_of, select_param_space
from gradiend_core.errors import GradiendError

REPO = Path(__file__).resolve().parents[1]


def meta_llama(n_layers: int) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=32,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=n_layers,
        num_attention_heads=2,
        num_key_value_heads=2,
    )
    with torch.device("meta"):  # names and shapes only, no weights
        return LlamaForCausalLM(config)


def gradient(first_layer, last_layer=None) -> SimpleNamespace:
    return SimpleNamespace(
        include=["*"],
        exclude=[],
        exclude_embeddings=True,
        first_layer=first_layer,
        last_layer=last_layer,
    )


def blocks(space) -> list[int]:
    return sorted({layer_of(n) for n in space.names})


@pytest.mark.parametrize(
    ("n_layers", "expected"),
    [
        (30, list(range(20, 30))),  # SmolLM2-135M: blocks 20..29, as before the default moved
        (18, list(range(8, 18))),  # Gemma-3-270m
        (12, list(range(2, 12))),
        (6, list(range(6))),  # shallower than ten: every block
        (1, [0]),
    ],
)
def test_the_default_selects_the_last_ten_blocks_of_any_depth(n_layers, expected):
    default = yaml.safe_load((REPO / "params.yaml").read_text())["gradient"]
    space = select_param_space(meta_llama(n_layers), gradient(default["first_layer"]))
    assert blocks(space) == expected
    # 9 tensors per Llama block (q, k, v, o, gate, up, down, two norms); no non-block tensor.
    assert len(space.names) == 9 * len(expected)


def test_explicit_ranges_and_impossible_ones():
    model = meta_llama(6)
    assert blocks(select_param_space(model, gradient(2, 3))) == [2, 3]
    assert blocks(select_param_space(model, gradient(-2))) == [4, 5]
    assert blocks(select_param_space(model, gradient(None, -6))) == [0]
    with pytest.raises(GradiendError, match="select no block; the model has blocks 0..5"):
        select_param_space(model, gradient(6))
    with pytest.raises(GradiendError, match="select no block"):
        select_param_space(model, gradient(4, 2))
