"""The token convention: how masked text becomes model inputs and class words become token ids.

One convention serves training, encoder and decoder evaluation and the rewrite
(docs/method.md §2.4):

* causal models read the **prefix**: the text before the first mask, right-stripped, with the
  tokenizer's special tokens, keeping its last ``max_length`` tokens;
* the **target** of a word is the single token of ``" " + word``: the word follows a space in
  running text, so byte-level BPE vocabularies (GPT-2, Llama 3, RoBERTa, whose mask token absorbs
  the space before it) hold it as the space-prefixed entry, while WordPiece and SentencePiece
  tokenizers (BERT, ALBERT) ignore the leading space; a word that splits, or maps to the unknown
  token, has no single token;
* batches are **left-padded** with explicit position ids, so the last column is every row's last
  real token and positions restart at 0 on each row's first real token.
"""

from __future__ import annotations

import torch

from gradiend_core.errors import GradiendError


def prefix_before_mask(masked: str, mask: str) -> str:
    """The text before the first ``mask``, right-stripped (the next token then starts a word)."""
    if mask not in masked:
        raise GradiendError(
            f"masked text has no {mask!r}: {masked[:80]!r}; every row of data/examples.parquet "
            "must contain the mask (regenerate with 'dvc repro data')."
        )
    return masked.split(mask, 1)[0].rstrip()


def causal_prefix_ids(tokenizer, masked: str, mask: str, max_length: int) -> list[int]:
    """Token ids of the prefix (with special tokens), keeping the last ``max_length``."""
    ids = tokenizer(prefix_before_mask(masked, mask), add_special_tokens=True)["input_ids"]
    return list(ids[-max_length:])


def word_text(word: str, kind: str) -> str:
    """The string whose single token stands for ``word`` in running text: ``" " + word``.

    The same text for both kinds ('causal' | 'masked'): a causal model emits the space-prefixed
    token after a right-stripped prefix, and a RoBERTa-style masked LM predicts it at a mask that
    absorbed the space before it (``lstrip``); WordPiece/SentencePiece masked LMs (BERT, ALBERT)
    give " he" and "he" the same id.
    """
    return " " + word


def single_token_id(tokenizer, word: str, kind: str) -> int | None:
    """Vocabulary id of ``word`` as the model would emit it, or None.

    None if it is several tokens or the unknown token (an out-of-vocabulary casing such as 'HE'
    must not count as a token of its class: every class would then share the unknown id).
    """
    ids = tokenizer(word_text(word, kind), add_special_tokens=False)["input_ids"]
    unk = getattr(tokenizer, "unk_token_id", None)
    return ids[0] if len(ids) == 1 and (unk is None or ids[0] != unk) else None


def require_single_token(tokenizer, word: str, kind: str) -> int:
    """Like ``single_token_id`` but a word that splits is a one-line user error."""
    token = single_token_id(tokenizer, word, kind)
    if token is None:
        ids = tokenizer(word_text(word, kind), add_special_tokens=False)["input_ids"]
        pieces = tokenizer.convert_ids_to_tokens(ids)
        raise GradiendError(
            f"params.yaml: 'feature.targets' word {word!r} is not a single token for this model "
            f"(it splits into {pieces}); choose single-token target words."
        )
    return token


def casing_variants(word: str) -> list[str]:
    """``word`` in lower, Title and UPPER case, without duplicates, in that order."""
    return list(dict.fromkeys([word.lower(), word[:1].upper() + word[1:].lower(), word.upper()]))


def class_token_ids(tokenizer, kind: str, targets: dict[str, list[str]]) -> dict[str, list[int]]:
    """Per class: the distinct single-token ids of every casing variant of its target words.

    P(class) at a position is the sum of the probabilities of these ids (docs/method.md §7.4).
    """
    out = {}
    for cls, words in targets.items():
        ids: list[int] = []
        for word in words:
            for variant in casing_variants(word):
                token = single_token_id(tokenizer, variant, kind)
                if token is not None and token not in ids:
                    ids.append(token)
        if not ids:
            raise GradiendError(
                f"params.yaml: no casing of feature.targets[{cls!r}] = {words} is a single token "
                "for this model; choose single-token words."
            )
        out[cls] = ids
    return out


def left_pad(
    sequences: list[list[int]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(ids, attention_mask, position_ids), each (B, T): left padding, positions from 0 per row."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attn = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, s in enumerate(sequences):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s)
            attn[i, width - len(s) :] = 1
    pos = (attn.cumsum(-1) - 1).clamp(min=0)
    return ids, attn, pos


def right_pad(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask), each (B, T): right padding (masked LMs, full-sequence scores)."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attn = torch.zeros_like(ids)
    for i, s in enumerate(sequences):
        ids[i, : len(s)], attn[i, : len(s)] = torch.tensor(s, dtype=torch.long), 1
    return ids, attn


def tokenize_with_masks(
    tokenizer, text: str, mask: str, max_length: int, keep_after: int
) -> tuple[list[int], list[int]]:
    """Token ids of ``text`` with each ``mask`` turned into one placeholder position (the pad id).

    Pieces are tokenized separately: the prefix (right-stripped, with special tokens), then each
    later piece without special tokens, keeping its leading space (so " said" after a mask is the
    usual space-prefixed token). Every piece that another mask follows is right-stripped like the
    prefix, so its trailing space never becomes a token of its own before the next mask. A
    sequence longer than ``max_length`` is cut so that the first mask and the ``keep_after``
    tokens after it survive. Returns (ids, mask positions).
    """
    pieces = text.split(mask)
    if len(pieces) < 2:
        raise GradiendError(
            f"masked text has no {mask!r}: {text[:80]!r}; every row of data/examples.parquet "
            "must contain the mask (regenerate with 'dvc repro data')."
        )
    placeholder = tokenizer.pad_token_id
    ids = list(tokenizer(pieces[0].rstrip(), add_special_tokens=True)["input_ids"])
    masks = []
    for i, piece in enumerate(pieces[1:], start=1):
        masks.append(len(ids))
        ids.append(placeholder)
        if i < len(pieces) - 1:
            piece = piece.rstrip()  # another mask follows: as for the prefix
        if piece:
            ids.extend(tokenizer(piece, add_special_tokens=False)["input_ids"])
    if len(ids) > max_length:
        start = max(0, min(masks[0] + keep_after - max_length, masks[0]))
        ids = ids[start : start + max_length]
        masks = [m - start for m in masks if 0 <= m - start < max_length]
    return ids, masks
