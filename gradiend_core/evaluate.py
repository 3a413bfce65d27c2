"""Encoder metrics, the decoder grid with its LMS constraint, and the selection policy (spec §6-§7).

Decoder: a grid point (f, η) edits the base model in place, θ' = θ + η·dec(f) = θ + η·(W_d f + b_d)
on θ's kept coordinates, measures, and restores the saved original values exactly (no deep copy of the
model, no floating-point drift from adding and subtracting). Measures per point:

* ``probs_by_dataset[D][C]``: mean over test rows whose factual class is D of P(C's tokens | prefix),
  summed over the casing variants of C's words (causal: next token after the prefix; masked: at the mask);
* LMS on neutral text — causal: 1 / (1 + mean NLL of each token given the tokens before it, i.e. the
  *shifted* NLL; the reference's unshifted version is a bug, spec §7.4); masked: accuracy on 15 % of
  tokens masked with a fixed seed.

Selection (``LMSThresholdPolicy``): strengthening C considers the points with C's strengthening factor
and maximises P(C) on the other class's rows; weakening C considers the points with the other class's
strengthening factor and maximises 1 - P(C) on C's rows; only points with LMS >= ratio × base LMS
qualify; if none does, the smallest η is reported with ``constraint_met: false``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn

from gradiend_core.errors import GradiendError
from gradiend_core.gradients import GradientComputer, encoder_label, prefix_before_mask, single_token_id
from gradiend_core.mlm_head import left_pad
from gradiend_core.model import Gradiend, GradiendContext
from gradiend_core.modeling import BaseModel, ParamSpace
from gradiend_core.runtime import progress
from gradiend_core.train import pearson, source_class

# ---------------------------------------------------------------------------------------------------
# Encoder
# ---------------------------------------------------------------------------------------------------


@torch.no_grad()
def _encode(model: Gradiend, vector: torch.Tensor) -> float:
    return float(model.encode(vector.to(model.encoder_weight.device))[0])


def encode_examples(computer: GradientComputer, model: Gradiend, rows: pd.DataFrame, classes: list[str], source: str) -> pd.DataFrame:
    out = []
    for i, r in enumerate(progress(rows.itertuples(index=False), total=len(rows), desc="encode test rows")):
        vec = computer.vectors([r.masked], [r.factual], [r.alternative], (source,), where=f"test example {i}")[source]
        out.append({"type": "test", "source_class": source_class(r.factual_class, classes, source), "label": encoder_label(r.factual_class, classes, source), "encoded": _encode(model, vec), "text": r.masked})
    return pd.DataFrame(out)


def encode_neutral(computer: GradientComputer, model: Gradiend, texts: list[str], seed: int) -> pd.DataFrame:
    rng = random.Random(seed)
    out = []
    for text in progress(texts, desc="encode neutral rows"):
        vec = computer.neutral_vector(text, rng)
        out.append({"type": "neutral", "source_class": "neutral", "label": 0, "encoded": _encode(model, vec), "text": text})
    return pd.DataFrame(out, columns=["type", "source_class", "label", "encoded", "text"])


def _ternary(v: torch.Tensor) -> torch.Tensor:
    return torch.where(v >= 0.5, 1, torch.where(v <= -0.5, -1, 0))


def encoder_metrics(frame: pd.DataFrame, classes: list[str]) -> dict:
    """Spec §6.2: correlation on the target pair (test split) plus neutral-aware views."""
    test = frame[frame["type"] == "test"]
    if test["label"].nunique() < 2:
        raise GradiendError("encoder evaluation needs test rows of both classes; regenerate data with more rows per class.")
    enc, lab = torch.tensor(test["encoded"].to_numpy()), torch.tensor(test["label"].to_numpy(), dtype=torch.float64)
    all_enc, all_lab = torch.tensor(frame["encoded"].to_numpy()), torch.tensor(frame["label"].to_numpy(), dtype=torch.float64)
    neutral = frame[frame["type"] == "neutral"]["encoded"]
    return {
        "correlation": pearson(enc, lab),
        "accuracy": float(((enc >= 0).double() * 2 - 1 == lab).double().mean()),
        "correlation_with_neutral": pearson(all_enc, all_lab),
        "accuracy_ternary_with_neutral": float((_ternary(all_enc) == all_lab.long()).double().mean()),
        "mean_by_class": {c: float(test[test["source_class"] == c]["encoded"].mean()) for c in classes},
        "neutral": {"n": int(len(neutral)), "mean": float(neutral.mean()) if len(neutral) else None, "abs_mean": float(neutral.abs().mean()) if len(neutral) else None, "std": float(neutral.std(ddof=0)) if len(neutral) else None},
        "n_test_rows": int(len(test)),
    }


# ---------------------------------------------------------------------------------------------------
# Editing weights in place
# ---------------------------------------------------------------------------------------------------


class WeightEditor:
    """θ' = θ + δ on the kept coordinates of θ, always computed from the saved originals."""

    def __init__(self, model: nn.Module, space: ParamSpace):
        named = dict(model.named_parameters())
        self.targets = []
        for name, idx in zip(space.names, space.local_indices(), strict=True):
            flat = named[name].data.view(-1)
            idx = None if idx is None else idx.to(flat.device)
            self.targets.append((flat, idx, (flat if idx is None else flat[idx]).clone()))

    @torch.no_grad()
    def apply(self, delta: torch.Tensor) -> None:
        at = 0
        for flat, idx, original in self.targets:
            part = delta[at : at + original.numel()].to(flat.device, flat.dtype)
            at += original.numel()
            if idx is None:
                flat.copy_(original + part)
            else:
                flat[idx] = original + part

    @torch.no_grad()
    def restore(self) -> None:
        for flat, idx, original in self.targets:
            if idx is None:
                flat.copy_(original)
            else:
                flat[idx] = original


@torch.no_grad()
def update_direction(model: Gradiend, feature_factor: float) -> torch.Tensor:
    """dec(f) = W_d f + b_d: the direction added to θ (scaled by η)."""
    h = torch.full((model.latent_dim,), float(feature_factor), device=model.decoder_weight.device)
    return model.decode(h)


# ---------------------------------------------------------------------------------------------------
# Probabilities and LMS
# ---------------------------------------------------------------------------------------------------


def class_token_ids(tokenizer, kind: str, targets: dict[str, list[str]]) -> dict[str, list[int]]:
    """Per class: the single-token ids of each target word in lower, Title and UPPER case."""
    out = {}
    for cls, words in targets.items():
        ids = []
        for w in words:
            for variant in dict.fromkeys([w.lower(), w[:1].upper() + w[1:].lower(), w.upper()]):
                token = single_token_id(tokenizer, variant, kind)
                if token is not None and token not in ids:
                    ids.append(token)
        if not ids:
            raise GradiendError(f"params.yaml: no casing of feature.targets[{cls!r}] = {words} is a single token for this model; choose single-token words.")
        out[cls] = ids
    return out


@dataclass(frozen=True)
class ProbeSet:
    """Test rows whose next-token (or mask) distribution is read at every grid point."""

    classes: list[str]
    row_class: list[str]
    token_ids: dict[str, list[int]]
    inputs: list[list[int]]  # causal: prefix ids; masked: ids with the mask token
    mask_positions: list[int]  # masked only


def build_probe_set(base: BaseModel, rows: pd.DataFrame, classes: list[str], targets: dict[str, list[str]], mask: str, max_length: int) -> ProbeSet:
    tok = base.tokenizer
    inputs, positions = [], []
    for m in rows["masked"]:
        if base.kind == "causal":
            ids = tok(prefix_before_mask(m, mask), add_special_tokens=True)["input_ids"][-max_length:]
            pos = -1
        else:
            ids = tok(m.replace(mask, tok.mask_token), truncation=True, max_length=max_length)["input_ids"]
            if tok.mask_token_id not in ids:
                raise GradiendError(f"a test row lost its mask to truncation (gradient.max_length = {max_length}): {m[:60]!r}.")
            pos = ids.index(tok.mask_token_id)
        inputs.append(ids)
        positions.append(pos)
    return ProbeSet(classes, rows["factual_class"].tolist(), class_token_ids(tok, base.kind, targets), inputs, positions)


@torch.no_grad()
def class_probabilities(base: BaseModel, probe: ProbeSet, batch_size: int) -> torch.Tensor:
    """(rows, classes): P(class tokens) at each row's prediction position."""
    dev = base.device
    out = []
    for start in range(0, len(probe.inputs), batch_size):
        chunk = probe.inputs[start : start + batch_size]
        if base.kind == "causal":
            ids, attn, pos = left_pad(chunk, base.tokenizer.pad_token_id)
            logits = base.model(input_ids=ids.to(dev), attention_mask=attn.to(dev), position_ids=pos.to(dev), logits_to_keep=1, use_cache=False).logits[:, -1]
        else:
            width = max(len(s) for s in chunk)
            ids = torch.full((len(chunk), width), base.tokenizer.pad_token_id)
            attn = torch.zeros_like(ids)
            for i, s in enumerate(chunk):
                ids[i, : len(s)], attn[i, : len(s)] = torch.tensor(s), 1
            full = base.model(input_ids=ids.to(dev), attention_mask=attn.to(dev)).logits
            logits = full[torch.arange(len(chunk)), torch.tensor(probe.mask_positions[start : start + batch_size])]
        probs = logits.float().softmax(-1)
        out.append(torch.stack([probs[:, probe.token_ids[c]].sum(-1) for c in probe.classes], dim=-1).cpu())
    return torch.cat(out)


def probs_by_dataset(probe: ProbeSet, probs: torch.Tensor) -> dict[str, dict[str, float]]:
    out = {}
    for d in probe.classes:
        rows = torch.tensor([c == d for c in probe.row_class])
        out[d] = {c: float(probs[rows, j].mean()) for j, c in enumerate(probe.classes)}
    return out


@dataclass(frozen=True)
class LmsSet:
    """Tokenised neutral texts for the language-modelling score."""

    kind: str
    sequences: list[list[int]]
    masked_positions: list[list[int]]  # masked LMs only


def build_lms_set(base: BaseModel, texts: list[str], max_length: int) -> LmsSet:
    tok = base.tokenizer
    seqs = [tok(t, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"] for t in texts]
    if not seqs:
        raise GradiendError("data/neutral.parquet has no text for the LMS; regenerate the data (data.neutral_size).")
    positions: list[list[int]] = []
    if base.kind == "masked":
        special = set(tok.all_special_ids)
        rng = random.Random(42)
        for s in seqs:
            cand = [i for i, t in enumerate(s) if t not in special]
            positions.append(sorted(rng.sample(cand, max(1, int(0.15 * len(cand))))) if cand else [])
    return LmsSet(base.kind, seqs, positions)


@torch.no_grad()
def language_modelling_score(base: BaseModel, lms_set: LmsSet, batch_size: int) -> dict:
    """Causal: 1 / (1 + mean shifted NLL); masked: accuracy on fixed masked positions."""
    dev, pad = base.device, base.tokenizer.pad_token_id
    total, count = 0.0, 0
    for start in range(0, len(lms_set.sequences), batch_size):
        chunk = lms_set.sequences[start : start + batch_size]
        width = max(len(s) for s in chunk)
        ids = torch.full((len(chunk), width), pad)
        attn = torch.zeros_like(ids)
        for i, s in enumerate(chunk):
            ids[i, : len(s)], attn[i, : len(s)] = torch.tensor(s), 1
        if lms_set.kind == "causal":
            logits = base.model(input_ids=ids.to(dev), attention_mask=attn.to(dev), use_cache=False).logits.float()
            nll = nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:].to(dev), reduction="none")  # token t+1 given ≤ t
            keep = attn[:, 1:].to(dev).bool()
            total += float(nll[keep].sum())
            count += int(keep.sum())
        else:
            masked = ids.clone()
            for i, pos in enumerate(lms_set.masked_positions[start : start + batch_size]):
                masked[i, pos] = base.tokenizer.mask_token_id
            pred = base.model(input_ids=masked.to(dev), attention_mask=attn.to(dev)).logits.argmax(-1).cpu()
            for i, pos in enumerate(lms_set.masked_positions[start : start + batch_size]):
                total += float((pred[i, pos] == ids[i, pos]).sum())
                count += len(pos)
    if count == 0:
        raise GradiendError("the LMS texts have no scorable token; use longer neutral sentences (data.min_words).")
    if lms_set.kind == "causal":
        mean_nll = total / count
        return {"lms": 1.0 / (1.0 + mean_nll) if mean_nll < 700 else 0.0, "mean_nll": mean_nll, "tokens": count}
    return {"lms": total / count, "tokens": count}


# ---------------------------------------------------------------------------------------------------
# Grid and selection
# ---------------------------------------------------------------------------------------------------


def measure(base: BaseModel, probe: ProbeSet, lms_set: LmsSet, batch_size: int) -> dict:
    probs = class_probabilities(base, probe, batch_size)
    return {"probs_by_dataset": probs_by_dataset(probe, probs), **language_modelling_score(base, lms_set, batch_size)}


def decoder_grid(base: BaseModel, gradiend: Gradiend, space: ParamSpace, probe: ProbeSet, lms_set: LmsSet, feature_factors: list[float], learning_rates: list[float], batch_size: int) -> tuple[dict, list[dict]]:
    """The base point and every (f, η) point, each measured on the in-place edited model."""
    editor = WeightEditor(base.model, space)
    base_point = measure(base, probe, lms_set, batch_size)
    points = []
    grid = [(f, lr) for f in sorted(feature_factors) for lr in sorted(learning_rates)]
    for f, lr in progress(grid, desc="decoder grid"):
        editor.apply(lr * update_direction(gradiend, f))
        try:
            points.append({"feature_factor": float(f), "learning_rate": float(lr), **measure(base, probe, lms_set, batch_size)})
        finally:
            editor.restore()
    return base_point, points


def select(points: list[dict], base_point: dict, context: GradiendContext, lms_ratio: float) -> dict[str, dict | None]:
    """Strengthen/weaken summaries per class: '<class>' and '<class>_weaken'."""
    classes = context.classes
    out: dict[str, dict | None] = {}
    for cls in classes:
        other = classes[1] if cls == classes[0] else classes[0]
        for key, factor, dataset, sign in ((cls, context.strengthen_factor(cls), other, 1), (f"{cls}_weaken", context.weaken_factor(cls), cls, -1)):
            def metric(point: dict, cls: str = cls, dataset: str = dataset, sign: int = sign) -> float:
                p = point["probs_by_dataset"][dataset][cls]
                return p if sign > 0 else 1.0 - p

            candidates = [p for p in points if p["feature_factor"] == factor]
            if not candidates:
                out[key] = None
                continue
            passing = [p for p in candidates if p["lms"] >= lms_ratio * base_point["lms"]]
            chosen = max(passing, key=lambda p: (metric(p), -p["learning_rate"])) if passing else min(candidates, key=lambda p: p["learning_rate"])
            out[key] = {
                "class": cls, "direction": "strengthen" if sign > 0 else "weaken", "rows_of_class": dataset,
                "value": metric(chosen), "base_value": metric(base_point), "feature_factor": chosen["feature_factor"], "learning_rate": chosen["learning_rate"],
                "lms": chosen["lms"], "base_lms": base_point["lms"], "lms_ratio": chosen["lms"] / base_point["lms"], "constraint_met": bool(passing),
            }
    return out
