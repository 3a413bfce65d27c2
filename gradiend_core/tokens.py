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
* causal batches are **packed**: the sequences of a batch are laid end to end in one row with
  position ids that restart at 0 on each sequence's first token, so attention stays within a
  sequence and no compute is spent on padding (``causal_batch``). A model whose attention ignores
  packed position ids (checked once per model) gets **left-padded** batches with an attention
  mask and the same position ids instead.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass

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
    prefix, so its trailing space never becomes a token of its own before the next mask.

    Only the last mask and the ``keep_after - 1`` tokens after it are read (the pooled window,
    docs/method.md §2.5), and in a causal model no position sees a later one, so the tokens past
    that window are dropped: the states that are read stay the same while every pass over the row
    gets shorter (about a third fewer tokens on the default data). A sequence still longer than
    ``max_length`` is then cut so that the first mask and the ``keep_after`` tokens from it on
    survive. Returns (ids, mask positions).
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
    del ids[masks[-1] + max(keep_after, 1) :]  # nothing reads the states past the last window
    if len(ids) > max_length:
        start = max(0, min(masks[0] + keep_after - max_length, masks[0]))
        ids = ids[start : start + max_length]
        masks = [m - start for m in masks if 0 <= m - start < max_length]
    return ids, masks


# ---- causal batches: packed, or left-padded where the model cannot take packed sequences ------

LOG = logging.getLogger(__name__)

# Packed and separate passes of the check agree to float rounding (different matrix shapes sum in
# a different order); a model that mixes the packed sequences is off by orders of magnitude more.
PACKING_RTOL, PACKING_ATOL = 1e-3, 1e-4
_PACKING_OK: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class SequenceBatch:
    """Token sequences laid out for one forward pass of a causal model.

    ``packed``: one row (B = 1) holding every sequence end to end, no attention mask; the model's
    attention keeps each sequence to itself because its position ids restart at 0. Otherwise the
    sequences are left-padded rows with an attention mask. Either way ``flat_starts[r]`` is the
    index of sequence r's first token in the flattened (B·T) token axis and ``lengths[r]`` its
    length, so a consumer gathers per-sequence positions from ``x.reshape(B * T, ...)``.
    """

    input_ids: torch.Tensor  # (B, T)
    position_ids: torch.Tensor  # (B, T)
    attention_mask: torch.Tensor | None  # (B, T); None when packed
    flat_starts: torch.Tensor  # (R,)
    lengths: torch.Tensor  # (R,)

    @property
    def packed(self) -> bool:
        return self.attention_mask is None

    @property
    def flat_last(self) -> torch.Tensor:
        """(R,) flat index of each sequence's last token."""
        return self.flat_starts + self.lengths - 1

    def inputs(self, device) -> dict:
        """Keyword arguments of the model call (ids, positions, the mask when padded). Call the
        model with ``use_cache=False``: Hugging Face models read packed position ids only
        without a key/value cache."""
        out = {
            "input_ids": self.input_ids.to(device),
            "position_ids": self.position_ids.to(device),
        }
        if self.attention_mask is not None:
            out["attention_mask"] = self.attention_mask.to(device)
        return out

    def last_token_keep(self, device=None):
        """``logits_to_keep`` that yields each sequence's last position: the packed last indices
        (on ``device``, the model's), or the last column of the left-padded rows."""
        return self.flat_last.to(device) if self.packed else 1

    def row_of_token(self) -> torch.Tensor:
        """(B·T,) the sequence of every token in the flattened token axis (a padding token counts
        for the row it pads)."""
        rows = torch.arange(len(self.lengths))
        if self.packed:
            return torch.repeat_interleave(rows, self.lengths)
        return rows.repeat_interleave(self.input_ids.shape[1])

    def last_token_rows(self, logits: torch.Tensor) -> torch.Tensor:
        """(R, V) from the logits of a call with ``logits_to_keep=last_token_keep()``."""
        return logits[0] if self.packed else logits[:, -1]


def pack(sequences: list[list[int]]) -> SequenceBatch:
    """Every sequence end to end in one row; position ids restart at 0 on each sequence."""
    if any(len(s) == 0 for s in sequences):
        raise ValueError("cannot pack an empty sequence")
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    starts = torch.cumsum(lengths, 0) - lengths
    ids = torch.tensor([t for s in sequences for t in s], dtype=torch.long)[None]
    pos = torch.cat([torch.arange(len(s)) for s in sequences])[None]
    return SequenceBatch(ids, pos, None, starts, lengths)


def pad_left(sequences: list[list[int]], pad_id: int) -> SequenceBatch:
    """Left-padded rows (``left_pad``) as a ``SequenceBatch``."""
    ids, attn, pos = left_pad(sequences, pad_id)
    width = ids.shape[1]
    lengths = torch.tensor([len(s) for s in sequences], dtype=torch.long)
    starts = torch.arange(len(sequences)) * width + (width - lengths)
    return SequenceBatch(ids, pos, attn, starts, lengths)


@torch.no_grad()
def packing_supported(model) -> bool:
    """Whether ``model`` keeps packed sequences apart (checked once per model object).

    Two short sequences are run packed and one at a time; their last-token logits must agree.
    Hugging Face models whose mask builder reads packed position ids (Llama, Gemma, GPT-2, ... in
    transformers 5) pass; a model that lets the second sequence attend to the first fails and is
    given left-padded batches.
    """
    if model in _PACKING_OK:
        return _PACKING_OK[model]
    vocab = model.get_input_embeddings().weight.shape[0]
    first, second = [[(7 * i + 3) % vocab for i in range(n)] for n in (5, 3)]
    device = next(model.parameters()).device
    batch = pack([first, second])
    was_training = model.training
    model.eval()
    try:
        together = model(
            **batch.inputs(device), logits_to_keep=batch.flat_last.to(device), use_cache=False
        ).logits[0]
        alone = torch.stack(
            [
                model(input_ids=torch.tensor([s], device=device), use_cache=False).logits[0, -1]
                for s in (first, second)
            ]
        )
        ok = bool(torch.allclose(together, alone, rtol=PACKING_RTOL, atol=PACKING_ATOL))
    except Exception as exc:  # an architecture that rejects the call: pad instead
        LOG.info("packed sequences unsupported (%s); left-padding", type(exc).__name__)
        ok = False
    finally:
        model.train(was_training)
    if not ok:
        LOG.warning("this model's attention does not keep packed sequences apart; left-padding")
    _PACKING_OK[model] = ok
    return ok


def causal_batch(model, sequences: list[list[int]], pad_id: int) -> SequenceBatch:
    """The batch layout for ``model``: packed when it supports it (``packing_supported``), else
    left-padded. Either way each sequence is computed as if it were alone (§2.4)."""
    if packing_supported(model):
        return pack(sequences)
    return pad_left(sequences, pad_id)
