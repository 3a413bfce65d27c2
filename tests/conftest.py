"""Shared fixtures: tiny models built from configs, word-level tokenizers and a tiny English corpus.

Nothing is downloaded. Three tiny models (2 blocks each), each with a word-level vocabulary:

* causal, Llama-style (tied embeddings) with a GPT-2/Llama-3-like tokenizer: a ByteLevel
  pre-tokenizer (no prefix space) over a vocabulary that holds every word bare and "Ġ"-prefixed, so
  "he" -> 'he' and " he" -> 'Ġhe' are different ids, and a trailing space is the token 'Ġ';
* masked, BERT-style, with a whitespace tokenizer: " he" and "he" are the same token 'he';
* masked, RoBERTa-style, with the causal fixture's byte-level pieces and a '<mask>' token that
  absorbs the space before it (lstrip), so a masked word is predicted as its 'Ġ' entry.

Token ids in the tests' hand-built references come from ``gpt2_pieces`` (the byte-level rule
written out: first word bare, every later word 'Ġ'-prefixed), never from the code under test.
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


SPACE = "Ġ"  # byte-level BPE's mark of a leading space


def gpt2_pieces(text: str) -> list[str]:
    """Byte-level pieces of a space-separated fixture text, by hand: the first word bare, every
    later word with the leading-space mark (what GPT-2-style tokenizers do without a prefix
    space)."""
    words = text.split()
    return words[:1] + [SPACE + w for w in words[1:]]


def _byte_level_tokenizer(specials: list[str]):
    """A WordLevel model over a ByteLevel pre-tokenizer: every word bare and 'Ġ'-prefixed."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    words = vocabulary()
    vocab = {t: i for i, t in enumerate(specials + words + [SPACE + w for w in words] + [SPACE])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok, vocab


def _word_tokenizer(kind: str):
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if kind == "causal":
        tok, _ = _byte_level_tokenizer(["<pad>", "<unk>", "</s>"])
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>"
        )
    if kind == "roberta":
        tok, vocab = _byte_level_tokenizer(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A </s>",
            special_tokens=[("<s>", vocab["<s>"]), ("</s>", vocab["</s>"])],
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=tok,
            bos_token="<s>",
            eos_token="</s>",
            cls_token="<s>",
            sep_token="</s>",
            pad_token="<pad>",
            unk_token="<unk>",
            mask_token=AddedToken("<mask>", lstrip=True, rstrip=False, special=True),
        )
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {tok: i for i, tok in enumerate(specials + vocabulary())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=specials[1]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
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


def build_tiny_roberta(folder: Path) -> Path:
    from transformers import RobertaConfig, RobertaForMaskedLM

    tokenizer = _word_tokenizer("roberta")
    config = RobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=130,  # RoBERTa's positions start after the pad id
        type_vocab_size=1,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(0)
    model = RobertaForMaskedLM(config)
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
def tiny_roberta_dir(tmp_path_factory) -> Path:
    return build_tiny_roberta(tmp_path_factory.mktemp("tiny_roberta"))


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


@pytest.fixture()
def roberta_base(tiny_roberta_dir):
    from gradiend_core.base_model import load_base_model

    torch.set_num_threads(1)
    return load_base_model(tiny_roberta_dir)


def data_settings(default_split: dict[str, float], **overrides):
    """``data`` params for build_dataset tests: ``default_split`` (unless ``split`` is
    overridden), no length, context or size limits unless overridden, no balancing, seed 0."""
    from types import SimpleNamespace

    values = {
        "min_words": 1,
        "max_words": 100,
        "min_left_context_words": 0,
        "max_per_class": 1000,
        "balance": False,
        "split": default_split,
        "neutral_size": 1000,
        "neutral_excluded_words": [],
        "seed": 0,
    }
    values.update(overrides)
    return SimpleNamespace(**values)


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
