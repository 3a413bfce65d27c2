"""Auxiliary MLM head for decoder-only models (docs/method.md §2.5, objective ``clm_mlm_head``).

A causal LM cannot see right context at the mask. The head gives it some: the mask position and the
next ``P-1`` positions (which *do* see the mask and what follows it) are mean-pooled,

    h = mean(H[p : p + P])            # (hidden,)   H = last hidden states of the frozen decoder
    logits = W h + b                  # (C,)        C = number of target labels (e.g. he, she)

and a linear classifier is trained with cross-entropy; the decoder stays frozen, so only ``W, b``
learn. The mask itself is fed as a fixed input vector (the mean of the input-embedding matrix), so
the vocabulary and the model are never resized and rewriting applies to the plain causal LM
unchanged.

Because the decoder is frozen and in eval mode, the pooled features do not change during head
training; they are computed once and the classifier is fit on them (identical to running the decoder
every epoch).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gradiend_core.block_cache import upper_blocks_only
from gradiend_core.data import require_split_rows
from gradiend_core.errors import GradiendError
from gradiend_core.io import load_tensors, read_json, save_tensors, write_json
from gradiend_core.lower_states import RowStates
from gradiend_core.tokens import (
    SequenceBatch,
    causal_batch,
    pad_left,
    require_single_token,
    single_token_id,
    tokenize_with_masks,
)

# Standard deviation of the classifier's initial weights (biases start at 0); small, so the head
# starts near the uniform distribution over its labels.
HEAD_INIT_STD = 0.02


@dataclass(frozen=True)
class MaskedBatch:
    """Masked texts laid out for one pass (``tokens.SequenceBatch``: packed or left-padded); mask
    positions hold a placeholder id whose embedding is replaced."""

    sequences: SequenceBatch
    mask_rows: torch.Tensor  # (M,)  text of each mask occurrence
    mask_flat: torch.Tensor  # (M,)  flat token index of each mask occurrence
    sequence_end: torch.Tensor  # (M,)  flat index one past the last token of its text
    # (block L, (B, T, H) states entering it) from stage lower_states; None: run every block
    lower: tuple[int, torch.Tensor] | None = None


def build_masked_batch(
    tokenizer,
    texts: list[str],
    mask: str,
    max_length: int,
    pooling_length: int,
    model=None,
    states: RowStates | None = None,
) -> MaskedBatch:
    """Tokenize ``texts`` (``tokenize_with_masks``) into one batch: packed when ``model`` is given
    and keeps packed sequences apart (``tokens.causal_batch``), else left-padded. With the rows'
    stored ``states`` (``lower_states``) the batch carries them, laid out like its tokens, and
    its passes run only the blocks above them."""
    encoded = [tokenize_with_masks(tokenizer, t, mask, max_length, pooling_length) for t in texts]
    sequences = [e[0] for e in encoded]
    pad = tokenizer.pad_token_id
    batch = causal_batch(model, sequences, pad) if model is not None else pad_left(sequences, pad)
    starts, ends = batch.flat_starts.tolist(), (batch.flat_starts + batch.lengths).tolist()
    rows, flat, end = [], [], []
    for i, (_, masks) in enumerate(encoded):
        for m in masks:
            rows.append(i)
            flat.append(starts[i] + m)
            end.append(ends[i])
    lower = None
    if states is not None:
        lower = (states.first, states.layout(texts, sequences, batch))
    return MaskedBatch(batch, torch.tensor(rows), torch.tensor(flat), torch.tensor(end), lower)


def mask_vector(model: nn.Module) -> torch.Tensor:
    """The input vector fed at mask positions: the mean input embedding (deterministic, no new
    token)."""
    return model.get_input_embeddings().weight.detach().mean(0)


def pooled_mask_states(
    model: nn.Module,
    batch: MaskedBatch,
    mask_embedding: torch.Tensor,
    pooling_length: int,
    lower: tuple[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """(M, hidden): mean of the last hidden states over [p, p+P) for each mask occurrence, the
    positions past the end of its text left out. With ``lower`` (default: the batch's own), a
    block index L and the (B, T, H) states entering it, only blocks L.. run."""
    device = mask_embedding.device
    seq = batch.sequences
    lower = lower if lower is not None else batch.lower
    inputs = seq.inputs(device)
    ids = inputs.pop("input_ids")
    if lower is None:
        embeds = model.get_input_embeddings()(ids)  # (B, T, H)
        is_mask = torch.zeros(ids.numel(), dtype=torch.bool, device=device)
        is_mask[batch.mask_flat.to(device)] = True
        embeds = torch.where(
            is_mask.view(ids.shape).unsqueeze(-1), mask_embedding.to(embeds.dtype), embeds
        )
        # no cache: a cache would make the model ignore the packed position ids (tokens.py)
        hidden = model.base_model(inputs_embeds=embeds, **inputs, use_cache=False)
    else:
        first, states = lower
        with upper_blocks_only(model, first):
            hidden = model.base_model(inputs_embeds=states.to(device), **inputs, use_cache=False)
    hidden = hidden.last_hidden_state
    flat = hidden.reshape(-1, hidden.shape[-1])  # (B·T, H)
    offsets = torch.arange(pooling_length, device=device)
    cols = batch.mask_flat.to(device).unsqueeze(1) + offsets  # (M, P)
    valid = cols < batch.sequence_end.to(device).unsqueeze(1)
    cols = cols.clamp(max=flat.shape[0] - 1)
    gathered = flat[cols] * valid.unsqueeze(-1)  # (M, P, H)
    return gathered.sum(1) / valid.sum(1, keepdim=True)


class MlmHead(nn.Module):
    """Linear classifier over the target labels on pooled mask states."""

    def __init__(
        self, hidden_size: int, labels: list[str], pooling_length: int, mask_embedding: torch.Tensor
    ):
        super().__init__()
        self.labels = list(labels)
        self.pooling_length = pooling_length
        self.classifier = nn.Linear(hidden_size, len(labels))
        self.register_buffer("mask_embedding", mask_embedding.detach().clone())

    def label_index(self, word: str) -> int:
        key = word.strip().lower()
        if key not in self.labels:
            raise GradiendError(
                f"target {word!r} is not a label of the MLM head {self.labels}; rerun 'dvc repro"
                " mlm_head' after changing feature.targets."
            )
        return self.labels.index(key)

    def save(self, folder: Path, metadata: dict) -> None:
        tensors = {
            "classifier.weight": self.classifier.weight.detach(),
            "classifier.bias": self.classifier.bias.detach(),
            "mask_embedding": self.mask_embedding,
        }
        save_tensors(folder / "head.safetensors", tensors)
        write_json(
            folder / "config.json",
            {
                "used": True,
                "labels": self.labels,
                "pooling_length": self.pooling_length,
                "hidden_size": self.classifier.in_features,
                **metadata,
            },
        )

    @classmethod
    def load(cls, folder: str | Path) -> MlmHead | None:
        folder = Path(folder)
        config = read_json(folder / "config.json", "MLM head record")
        if not config.get("used"):
            return None
        tensors = load_tensors(folder / "head.safetensors", "MLM head weights")
        head = cls(
            config["hidden_size"],
            config["labels"],
            config["pooling_length"],
            tensors["mask_embedding"],
        )
        head.classifier.weight.data.copy_(tensors["classifier.weight"])
        head.classifier.bias.data.copy_(tensors["classifier.bias"])
        return head


def head_labels(targets: dict[str, list[str]], classes: list[str]) -> list[str]:
    """The head's output labels: every distinct target word, lowercased, in class order (a word
    listed twice in a class, such as 'her' in [she, her, her], is one label)."""
    return list(dict.fromkeys(w.lower() for c in classes for w in targets[c]))


def require_single_token_targets(tokenizer, targets: dict[str, list[str]]) -> None:
    """Every target word is one token of the causal model (as itself or lowercased).

    The head needs no token ids, but the decoder evaluation and the rewrite read P(word) from the
    plain model (§2.4, §7.4); a word that splits must stop this stage, not the evaluation after
    training.
    """
    for words in targets.values():
        for word in words:
            if single_token_id(tokenizer, word, "causal") is None:
                require_single_token(tokenizer, word.lower(), "causal")


def train_classifier(
    head: MlmHead,
    features: torch.Tensor,
    labels: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    seed: int,
) -> list[float]:
    """Fit the classifier on fixed features with AdamW + CE; returns the mean loss of each epoch."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(
        head.classifier.parameters(), lr=learning_rate, weight_decay=weight_decay
    )
    losses = []
    for _ in range(epochs):
        order = torch.randperm(len(features), generator=generator)
        total = 0.0
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            loss = nn.functional.cross_entropy(head.classifier(features[idx]), labels[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        losses.append(total / len(order))
    return losses


@torch.no_grad()
def accuracy(head: MlmHead, features: torch.Tensor, labels: torch.Tensor) -> float:
    if len(labels) == 0:
        return float("nan")
    return float((head.classifier(features).argmax(-1) == labels).float().mean())


def require_causal(kind: str) -> None:
    """The head is for decoder-only models; a masked LM has its own mask prediction."""
    if kind != "causal":
        raise GradiendError(
            "params.yaml: 'gradient.objective' = 'clm_mlm_head' needs a causal (decoder-only) "
            "model; use 'mlm' for masked LMs."
        )


def write_unused_record(folder: Path, objective: str) -> None:
    """The objective needs no head: say so in a record (never a fake head)."""
    write_json(
        folder / "config.json",
        {
            "used": False,
            "reason": f"gradient.objective is {objective!r}; only 'clm_mlm_head' uses an MLM head",
        },
    )


@torch.no_grad()
def pooled_features(
    model: nn.Module,
    tokenizer,
    texts: list[str],
    mask: str,
    max_length: int,
    pooling_length: int,
    mask_embedding: torch.Tensor,
    batch_size: int,
    states: RowStates | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled states of every mask occurrence, and the text index each belongs to (from the
    rows' stored lower-block ``states`` when given)."""
    from gradiend_core.runtime import progress

    feats, owners = [], []
    for start in progress(range(0, len(texts), batch_size), desc="pooled mask states"):
        batch = build_masked_batch(
            tokenizer,
            texts[start : start + batch_size],
            mask,
            max_length,
            pooling_length,
            model,
            states,
        )
        feats.append(pooled_mask_states(model, batch, mask_embedding, pooling_length).float().cpu())
        owners.append(batch.mask_rows + start)
    return torch.cat(feats), torch.cat(owners)


@dataclass(frozen=True)
class HeadFit:
    """A trained head, its headline metrics, and the mean training loss of each epoch."""

    head: MlmHead
    metrics: dict
    epoch_losses: list[float]


def fit_mlm_head(
    model: nn.Module, tokenizer, examples, feature, gradient, settings, states=None
) -> HeadFit:
    """Train the head on the frozen decoder's pooled states (docs/method.md §2.5).

    Args:
        model, tokenizer: the frozen causal base model.
        examples: the masked rows (``data/examples.parquet``); the train split (at most
            ``settings.max_per_class`` rows per class) fits the head, validation is reported.
            Every class needs rows in both splits, and every target word must be a single token
            of the model (one-line errors before any work otherwise).
        feature: ``feature`` params (classes, target words, mask placeholder).
        gradient: ``gradient`` params (``max_length``, ``pooling_length`` P: more positions see
            more right context but dilute the mask position's own state).
        settings: ``mlm_head`` params (epochs, batch size, AdamW learning rate and weight decay,
            seed of the initialisation and the epoch shuffles).
        states: the rows' stored lower-block states (``lower_states.RowStates``), or None to
            run every block.
    """
    require_single_token_targets(tokenizer, feature.targets)
    for split in ("train", "validation"):
        require_split_rows(examples, split, feature.classes)
    labels = head_labels(feature.targets, feature.classes)
    pooling = gradient.pooling_length
    head = MlmHead(model.config.hidden_size, labels, pooling, mask_vector(model))
    torch.manual_seed(settings.seed)
    head.classifier.weight.data.normal_(0.0, HEAD_INIT_STD)
    head.classifier.bias.data.zero_()
    data = {}
    for split in ("train", "validation"):
        rows = examples[examples["split"] == split]
        rows = rows.groupby("factual_class", sort=False).head(settings.max_per_class)
        feats, owners = pooled_features(
            model,
            tokenizer,
            rows["masked"].tolist(),
            feature.mask,
            gradient.max_length,
            pooling,
            head.mask_embedding,
            settings.batch_size,
            states,
        )
        y = torch.tensor([head.label_index(w) for w in rows["factual"]])[owners]
        data[split] = (feats, y, len(rows))
    losses = train_classifier(
        head,
        data["train"][0],
        data["train"][1],
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        learning_rate=settings.learning_rate,
        weight_decay=settings.weight_decay,
        seed=settings.seed,
    )
    metrics = {
        "used": True,
        "labels": labels,
        "pooling_length": pooling,
        "train_accuracy": accuracy(head, *data["train"][:2]),
        "validation_accuracy": accuracy(head, *data["validation"][:2]),
        "train_rows": data["train"][2],
        "validation_rows": data["validation"][2],
        "final_train_loss": losses[-1],
    }
    return HeadFit(head, metrics, losses)
