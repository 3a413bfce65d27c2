"""Shared fixtures: tiny models built from configs, word-level tokenizers and a tiny English corpus.

Nothing is downloaded. The causal model is Llama-style (tied embeddings, 2 blocks), the masked model
BERT-style; both use a whitespace word-level tokenizer, so " he" and "he" are the single token "he".
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("GRADIEND_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

SUBJECTS = [
    "my brother",
    "the doctor",
    "our neighbour",
    "the teacher",
    "my friend",
    "the old man",
    "the young woman",
    "my sister",
    "the nurse",
    "the engineer",
]
VERBS = ["said that", "told me that", "wrote that", "mentioned that", "believed that"]
PREDICATES = [
    "was very tired after the long day at work",
    "would come to the party later tonight",
    "had found the lost keys in the garden",
    "could not sleep because of the noise outside",
    "liked the new house near the river very much",
]
NEUTRAL = [
    "the weather was cold and windy all day long in the small town",
    "we walked to the station and waited for the late train together",
    "the garden behind the house was full of old trees and flowers",
    "they sold fresh bread and cheese at the market every morning",
    "the river flooded the fields after three days of heavy rain",
    "my cat sleeps on the warm sofa near the window every afternoon",
]


def corpus_lines(n_per_pronoun: int = 40, seed: int = 0) -> list[str]:
    """Deterministic sentences: half with 'he', half with 'she', plus neutral ones (one a line)."""
    rng = random.Random(seed)
    lines = []
    for pronoun in ("he", "she"):
        for _ in range(n_per_pronoun):
            lines.append(
                f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {pronoun}"
                f" {rng.choice(PREDICATES)} ."
            )
    lines += [s.capitalize() + " ." for s in NEUTRAL] * 4
    return lines


def vocabulary() -> list[str]:
    words = set()
    for text in SUBJECTS + VERBS + PREDICATES + NEUTRAL:
        words.update(text.split())
    words.update(["he", "she", "He", "She", ".", ",", "they"])
    words.update(w.capitalize() for text in SUBJECTS + NEUTRAL for w in text.split()[:1])
    return sorted(words)


def _word_tokenizer(kind: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if kind == "causal":
        specials = ["<pad>", "<unk>", "</s>"]
    else:
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {tok: i for i, tok in enumerate(specials + vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=specials[1]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if kind == "causal":
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>"
        )
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def build_tiny_causal(folder: Path) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = _word_tokenizer("causal")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_tiny_bert(folder: Path) -> Path:
    from transformers import BertConfig, BertForMaskedLM

    tokenizer = _word_tokenizer("masked")
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = BertForMaskedLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_causal_dir(tmp_path_factory) -> Path:
    return build_tiny_causal(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    return build_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(corpus_lines()) + "\n", encoding="utf-8")
    return path


@pytest.fixture()
def causal_base(tiny_causal_dir):
    from gradiend_core.base_model import load_base_model

    torch.set_num_threads(1)
    return load_base_model(tiny_causal_dir)


@pytest.fixture()
def bert_base(tiny_bert_dir):
    from gradiend_core.base_model import load_base_model

    torch.set_num_threads(1)
    return load_base_model(tiny_bert_dir)


def tiny_params(model_dir: Path, corpus: Path, **overrides) -> dict:
    """The repository's params.yaml with tiny, fast values for the tiny fixtures (deep-merged
    overrides)."""
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    tiny = {
        "runtime": {"num_threads": 1},
        "model": {"source": str(model_dir)},
        "data": {
            "sources": [str(corpus)],
            "min_words": 5,
            "max_words": 30,
            "min_left_context_words": 3,
            "max_per_class": 30,
            "neutral_size": 12,
        },
        "gradient": {"first_layer": None, "max_length": 32},
        "mlm_head": {"epochs": 5, "batch_size": 8, "max_per_class": 20},
        "pre_prune": {"n_samples": 4, "topk": 0.5},
        "train": {
            "seeds": [0, 1],
            "batch_size": 4,
            "max_steps": 6,
            "eval_steps": 3,
            "eval_max_per_class": 3,
            "learning_rate": 0.01,
        },
        "evaluate_encoder": {"max_per_class": 3, "neutral_size": 3},
        "evaluate_decoder": {
            "learning_rates": [1.0, 0.1],
            "max_per_class": 3,
            "neutral_size": 4,
            "batch_size": 4,
        },
    }
    for section, values in {**tiny, **overrides}.items():
        params.setdefault(section, {}).update(values)
    return params
