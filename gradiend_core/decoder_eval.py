"""Decoder evaluation: a grid of edits θ + η·dec(f), each measured, and the selection policy
(docs/method.md §7).

At every grid point (f, η) the base model is edited in place (``WeightEditor``), measured, and
restored exactly. Measures per point:

* ``probs_by_dataset[D][C]``: mean over test rows whose factual class is D of P(C's tokens | input),
  summed over the casing variants of C's words (causal: next token after the prefix; masked: at
  the mask) — §7.4;
* the LMS on neutral text — causal: 1 / (1 + mean NLL of each token given the tokens before it,
  the *shifted* NLL); masked: accuracy on a fixed random ``MLM_LMS_MASK_RATE`` of the tokens.

Selection (``select``, §7.5): strengthening C considers the points with C's strengthening factor
and maximizes P(C) on the other class's rows; weakening C considers the points with the other
class's strengthening factor and maximizes 1 - P(C) on C's rows; balancing considers every point
and minimizes the balance gap (``balance_gap``: the mean over all test rows of
|P(A) - P(B)| / (P(A) + P(B))); only points with LMS >= ``lms_ratio`` × base LMS qualify; if none
does, the smallest η is reported with ``constraint_met: false``.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from gradiend_core.base_model import BaseModel, ParamSpace
from gradiend_core.block_cache import LowerBlockCache, first_edited_block
from gradiend_core.data import LmsText, lms_text, take_balanced
from gradiend_core.errors import GradiendError
from gradiend_core.feature import ClassPair
from gradiend_core.gradiend import Gradiend, GradiendContext
from gradiend_core.io import load_tensors, save_tensors
from gradiend_core.runtime import progress
from gradiend_core.tokens import (
    SequenceBatch,
    casing_variants,
    causal_batch,
    causal_prefix_ids,
    class_token_ids,
    right_pad,
)
from gradiend_core.weight_edit import WeightEditor

# Masked-LM LMS: the share of each neutral sentence's ordinary tokens that is masked, and the seed
# that picks them (fixed, so every grid point is scored on the same positions).
MLM_LMS_MASK_RATE = 0.15
MLM_LMS_SEED = 42


# ---- class probabilities ---------------------------------------------------------------------


@dataclass(frozen=True)
class ProbeSet:
    """Test rows whose next-token (or mask) distribution is read at every grid point."""

    classes: list[str]
    row_class: list[str]
    token_ids: dict[str, list[int]]
    inputs: list[list[int]]  # causal: prefix ids; masked: ids with the mask token
    mask_positions: list[int]  # masked only (-1 for causal rows)


def build_probe_set(
    base: BaseModel,
    rows: pd.DataFrame,
    classes: list[str],
    targets: dict[str, list[str]],
    mask: str,
    max_length: int,
) -> ProbeSet:
    """Tokenize the test rows once, following the token convention (§2.4)."""
    tok = base.tokenizer
    inputs, positions = [], []
    for m in rows["masked"]:
        if base.kind == "causal":
            ids = causal_prefix_ids(tok, m, mask, max_length)
            pos = -1
        else:
            text = m.replace(mask, tok.mask_token)
            ids = tok(text, truncation=True, max_length=max_length)["input_ids"]
            if tok.mask_token_id not in ids:
                raise GradiendError(
                    f"a test row lost its mask to truncation (gradient.max_length = {max_length}): "
                    f"{m[:60]!r}; raise gradient.max_length or lower data.max_words."
                )
            pos = ids.index(tok.mask_token_id)
        inputs.append(ids)
        positions.append(pos)
    token_ids = class_token_ids(tok, base.kind, targets)
    return ProbeSet(classes, rows["factual_class"].tolist(), token_ids, inputs, positions)


@torch.no_grad()
def class_probabilities(
    base: BaseModel, probe: ProbeSet, batch_size: int, cache: LowerBlockCache | None = None
) -> torch.Tensor:
    """(rows, classes): P(class tokens) at each row's prediction position.

    ``cache`` (causal models) reuses the frozen lower blocks' output between weight edits."""
    dev = base.device
    out = []
    for start in range(0, len(probe.inputs), batch_size):
        chunk = probe.inputs[start : start + batch_size]
        if base.kind == "causal":
            batch = causal_batch(base.model, chunk, base.tokenizer.pad_token_id)
            inputs = {**batch.inputs(dev), "logits_to_keep": batch.last_token_keep(dev)}
            if cache is None:
                logits = base.model(**inputs, use_cache=False).logits
            else:
                logits = cache.logits(base.model, ("probe", start), **inputs)
            logits = batch.last_token_rows(logits)  # (B, V)
        else:
            ids, attn = right_pad(chunk, base.tokenizer.pad_token_id)
            full = base.model(input_ids=ids.to(dev), attention_mask=attn.to(dev)).logits
            at = torch.tensor(probe.mask_positions[start : start + batch_size])
            logits = full[torch.arange(len(chunk)), at]  # (B, V)
        probs = logits.float().softmax(-1)
        per_class = [probs[:, probe.token_ids[c]].sum(-1) for c in probe.classes]
        out.append(torch.stack(per_class, dim=-1).cpu())
    return torch.cat(out)


def balance_gap(probs: torch.Tensor) -> float:
    """Mean over rows of the relative gap |P(A) - P(B)| / (P(A) + P(B)) (§7.5, the balance goal).

    ``probs`` is (rows, 2), the two classes' probabilities at each row. A row's gap is 0 when the
    model gives both classes the same probability and 1 when it gives all of their joint mass to
    one of them; dividing by the joint mass makes the gap ignore how likely either class is at all
    (a row where the next word is rarely a pronoun counts as much as one where it surely is).
    Averaging per row, not per class mean, keeps a model that is one-sided in opposite directions
    on different rows from looking balanced. A row where neither class has any mass, or where the
    probabilities are not finite (a diverged edit), counts as fully one-sided (1), so a degenerate
    edit never looks balanced.
    """
    a, b = probs[:, 0].double(), probs[:, 1].double()
    total = a + b
    gap = torch.where(total > 0, (a - b).abs() / total, torch.ones_like(total))
    return float(torch.nan_to_num(gap, nan=1.0).mean())


def probs_by_dataset(probe: ProbeSet, probs: torch.Tensor) -> dict[str, dict[str, float]]:
    """``[D][C]``: mean P(C) over the rows of factual class D."""
    out = {}
    for d in probe.classes:
        rows = torch.tensor([c == d for c in probe.row_class])
        out[d] = {c: float(probs[rows, j].mean()) for j, c in enumerate(probe.classes)}
    return out


# ---- language-modelling score ----------------------------------------------------------------


@dataclass(frozen=True)
class LmsSet:
    """Tokenized texts for the language-modelling score (neutral sentences, or the filled test
    rows when there are none, §7.4)."""

    kind: str
    sequences: list[list[int]]
    masked_positions: list[list[int]]  # masked LMs only
    left_out: tuple[int, ...] = ()
    """Token ids never scored (causal) or masked (masked LMs): the target words of filled rows."""


def left_out_token_ids(tokenizer, words: list[str]) -> tuple[int, ...]:
    """Sorted ids of every casing of ``words`` (lower, Title, UPPER) that is a single known token,
    both as written and after a space, so a filled word is left out wherever it stands."""
    unk = getattr(tokenizer, "unk_token_id", None)
    ids = set()
    for word in words:
        for variant in casing_variants(word):
            for text in (variant, " " + variant):
                pieces = tokenizer(text, add_special_tokens=False)["input_ids"]
                if len(pieces) == 1 and pieces[0] != unk:
                    ids.add(pieces[0])
    return tuple(sorted(ids))


def build_lms_set(
    base: BaseModel, texts: list[str], max_length: int, left_out_words: list[str] = ()
) -> LmsSet:
    """Tokenize the LMS texts once; for masked LMs also fix the masked positions.

    ``left_out_words`` (the target words, when the texts are test rows with the mask filled by the
    factual word, §7.4): their tokens are never scored, so the LMS measures the text around the
    feature, not the feature the edit is meant to move; masked LMs never mask them.
    """
    tok = base.tokenizer
    seqs = [
        tok(t, add_special_tokens=True, truncation=True, max_length=max_length)["input_ids"]
        for t in texts
    ]
    if not seqs:
        raise GradiendError(
            "data/neutral.parquet has no text for the LMS; regenerate the data (data.neutral_size)."
        )
    left_out = left_out_token_ids(tok, list(left_out_words)) if left_out_words else ()
    positions: list[list[int]] = []
    if base.kind == "masked":
        skip = set(tok.all_special_ids) | set(left_out)
        rng = random.Random(MLM_LMS_SEED)
        for s in seqs:
            cand = [i for i, t in enumerate(s) if t not in skip]
            k = max(1, int(MLM_LMS_MASK_RATE * len(cand)))
            positions.append(sorted(rng.sample(cand, k)) if cand else [])
    return LmsSet(base.kind, seqs, positions, left_out)


def next_token_targets(
    batch: SequenceBatch, sequences: list[list[int]], left_out: tuple[int, ...] = ()
) -> tuple[torch.Tensor, torch.Tensor]:
    """(flat positions, targets) of the causal LMS: every token t + 1 of a sequence is scored from
    position t of that sequence (the shifted NLL), except tokens in ``left_out``."""
    positions, targets = [], []
    skip = set(left_out)
    for start, seq in zip(batch.flat_starts.tolist(), sequences, strict=True):
        for i in range(len(seq) - 1):
            if seq[i + 1] not in skip:
                positions.append(start + i)
                targets.append(seq[i + 1])
    return torch.tensor(positions, dtype=torch.long), torch.tensor(targets, dtype=torch.long)


@torch.no_grad()
def language_modelling_score(
    base: BaseModel, lms_set: LmsSet, batch_size: int, cache: LowerBlockCache | None = None
) -> dict:
    """§7.4. Causal: ``lms`` = 1 / (1 + mean shifted NLL) (token t+1 scored from tokens <= t,
    except tokens in ``lms_set.left_out``); a non-finite NLL (a diverged edit) scores 0, so it
    can never pass the LMS constraint. Masked: ``lms`` = accuracy on the fixed masked positions.
    ``cache``: as in ``class_probabilities``."""
    dev, pad = base.device, base.tokenizer.pad_token_id
    total, count = 0.0, 0
    for start in range(0, len(lms_set.sequences), batch_size):
        chunk = lms_set.sequences[start : start + batch_size]
        if lms_set.kind == "causal":
            batch = causal_batch(base.model, chunk, pad)
            scored, targets = next_token_targets(batch, chunk, lms_set.left_out)
            if len(targets) == 0:
                continue
            inputs = batch.inputs(dev)
            if batch.packed:  # the head runs on the scored positions only
                inputs["logits_to_keep"] = scored.to(dev)
            if cache is None:
                logits = base.model(**inputs, use_cache=False).logits
            else:
                logits = cache.logits(base.model, ("lms", start), **inputs)
            if batch.packed:
                flat = logits[0].float()
            else:
                flat = logits.reshape(-1, logits.shape[-1])[scored.to(dev)].float()
            total += float(nn.functional.cross_entropy(flat, targets.to(dev), reduction="sum"))
            count += len(targets)
        else:
            ids, attn = right_pad(chunk, pad)
            chunk_positions = lms_set.masked_positions[start : start + batch_size]
            masked = ids.clone()
            for i, pos in enumerate(chunk_positions):
                masked[i, pos] = base.tokenizer.mask_token_id
            logits = base.model(input_ids=masked.to(dev), attention_mask=attn.to(dev)).logits
            pred = logits.argmax(-1).cpu()
            for i, pos in enumerate(chunk_positions):
                total += float((pred[i, pos] == ids[i, pos]).sum())
                count += len(pos)
    if count == 0:
        raise GradiendError(
            "the LMS texts have no scorable token; use longer neutral sentences (data.min_words)."
        )
    if lms_set.kind == "causal":
        mean_nll = total / count
        lms = 1.0 / (1.0 + mean_nll) if math.isfinite(mean_nll) else 0.0
        return {"lms": lms, "mean_nll": mean_nll, "tokens": count}
    return {"lms": total / count, "tokens": count}


@dataclass(frozen=True)
class DecoderInputs:
    """What every measurement of the decoder grid and the rewrite reads: the probe rows, their
    tokenized prefixes, and the LMS text (neutral sentences, or the filled test rows, §7.4)."""

    rows: pd.DataFrame
    probe: ProbeSet
    lms: LmsText
    lms_set: LmsSet


def decoder_inputs(
    base: BaseModel, examples: pd.DataFrame, neutral: list[str], feature, settings, max_length: int
) -> DecoderInputs:
    """The pair's first ``settings.max_per_class`` test rows per class and the first
    ``settings.neutral_size`` neutral sentences (``settings``: the ``evaluate_decoder`` params),
    tokenized once for ``base``."""
    classes = ClassPair.of_feature(feature).classes
    rows = take_balanced(examples, "test", classes, settings.max_per_class)
    probe = build_probe_set(base, rows, classes, feature.targets, feature.mask, max_length)
    lms = lms_text(neutral[: settings.neutral_size], rows, feature)
    lms_set = build_lms_set(base, lms.texts, max_length, lms.left_out_words)
    return DecoderInputs(rows, probe, lms, lms_set)


# ---- the base model's side, made once (stage decoder_base) ------------------------------------


@dataclass(frozen=True)
class DecoderReference:
    """What every decoder grid of one base model, test rows and LMS text shares, whatever the
    GRADIEND (stage decoder_base@<pair>, ``models/decoder_base/<pair>.safetensors``): the unedited
    model's measurement (the grid's base point) and the hidden states entering block ``first`` for
    each fixed batch (``LowerBlockCache``; ``first`` is None and ``states`` empty when they cannot
    be reused). ``inputs`` fingerprints the tokenized inputs and batch size they were made for."""

    base_point: dict
    first: int | None
    states: dict[tuple, torch.Tensor]
    inputs: str


def inputs_fingerprint(probe: ProbeSet, lms_set: LmsSet, batch_size: int) -> str:
    """sha256 of everything that decides the grid's batches: token ids, masked positions, the
    class tokens, the left-out tokens and the batch size."""
    what = {
        "probe": [probe.classes, probe.row_class, probe.token_ids, probe.inputs],
        "mask_positions": probe.mask_positions,
        "lms": [lms_set.kind, lms_set.sequences, lms_set.masked_positions, list(lms_set.left_out)],
        "batch_size": batch_size,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()


def decoder_reference(
    base: BaseModel, probe: ProbeSet, lms_set: LmsSet, batch_size: int, first: int | None
) -> DecoderReference:
    """Measure the unedited model once, recording the states entering block ``first`` (the lowest
    block any GRADIEND of the pair edits: θ's first block) when the upper-block pass reproduces a
    full pass bit for bit."""
    cache = LowerBlockCache(base.model, first)
    base_point = measure(base, probe, lms_set, batch_size, cache)
    states = cache.states if cache.enabled else {}
    return DecoderReference(
        base_point,
        cache.first if states else None,
        states,
        inputs_fingerprint(probe, lms_set, batch_size),
    )


DECODER_BASE_KEY = "decoder_base"


def save_decoder_reference(reference: DecoderReference, path: str | Path) -> None:
    """One safetensors file: the states (keys ``<kind>/<batch start>``, kept as computed) and, as
    one JSON object under the metadata key ``decoder_base``, the base point (floats read back
    exactly), ``first`` and ``inputs`` (one key, so the bytes do not depend on hash-map order)."""
    tensors = {f"{kind}/{start}": state for (kind, start), state in reference.states.items()}
    meta = {
        "base_point": reference.base_point,
        "first": reference.first,
        "inputs": reference.inputs,
    }
    save_tensors(path, tensors, {DECODER_BASE_KEY: json.dumps(meta, sort_keys=True)})


def load_decoder_reference(path: str | Path, device) -> DecoderReference:
    from safetensors import safe_open

    tensors = load_tensors(path, "the base model's side of the decoder grid (stage decoder_base)")
    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads((handle.metadata() or {}).get(DECODER_BASE_KEY, "{}"))
    if not {"base_point", "first", "inputs"} <= meta.keys():
        raise GradiendError(
            f"{path}: not a decoder_base file (no '{DECODER_BASE_KEY}' metadata); rerun"
            " 'dvc repro' (stage decoder_base)."
        )
    states = {}
    for key, state in tensors.items():
        kind, _, start = key.rpartition("/")
        states[(kind, int(start))] = state.to(device)
    return DecoderReference(meta["base_point"], meta["first"], states, meta["inputs"])


def checked_reference(
    reference: DecoderReference, probe: ProbeSet, lms_set: LmsSet, batch_size: int, where: str
) -> DecoderReference:
    """``reference`` if it was made for exactly these inputs; else a one-line error."""
    if reference.inputs != inputs_fingerprint(probe, lms_set, batch_size):
        raise GradiendError(
            f"{where}: the base model's decoder measurement was made for other test rows, LMS"
            " text or evaluate_decoder.batch_size than the current data and params give; rerun"
            " 'dvc repro' (stage decoder_base)."
        )
    return reference


# ---- grid and selection ----------------------------------------------------------------------


def measure(
    base: BaseModel,
    probe: ProbeSet,
    lms_set: LmsSet,
    batch_size: int,
    cache: LowerBlockCache | None = None,
) -> dict:
    """Class probabilities, the balance gap over all rows and the LMS of the model as it is now.

    With a ``cache``, the first call must measure the unedited model (it records the frozen lower
    blocks' output); later calls run only the edited blocks."""
    probs = class_probabilities(base, probe, batch_size, cache)
    lms = language_modelling_score(base, lms_set, batch_size, cache)
    return {
        "probs_by_dataset": probs_by_dataset(probe, probs),
        "balance_gap": balance_gap(probs),
        **lms,
    }


def decoder_grid(
    base: BaseModel,
    gradiend: Gradiend,
    space: ParamSpace,
    probe: ProbeSet,
    lms_set: LmsSet,
    settings,
    reuse_lower_blocks: bool = True,
    balance: bool = False,
    reference: DecoderReference | None = None,
) -> tuple[dict, list[dict]]:
    """The base point and the measured (f, η) points (§7.3), each measured on the in-place
    edited model, the frozen lower blocks' output reused between points (``LowerBlockCache``).

    ``settings`` is the ``evaluate_decoder`` params section: ``feature_factors``,
    ``learning_rates``, ``batch_size``, ``lms_ratio``, ``search`` and ``refine_steps``. Which
    points are measured (``search``):

    * ``grid``: every (f, η) of the grid;
    * ``ascending``: per factor, η from small to large, stopping after the first point below the
      LMS floor. Every selection rule picks among LMS-passing points only, so when the LMS falls
      monotonically with η the choices equal the full grid's at about half the cost;
    * ``bracket``: per factor, a bisection over the sorted η grid for the largest η that passes
      (about log2 of the grid's size points, assuming, like ``ascending``, that the points that pass
      come before those that fail; the factors after the first start at the previous factor's
      boundary, usually two points, ``bracket_boundary``), then ``refine_steps`` geometric
      bisections between that η and the next grid value, which fails (each point η =
      √(η_pass·η_fail), rounded to 3 significant digits). Strengthening and weakening pick the
      largest shift among measured passing points, usually the largest passing η, so they get the
      grid's choice or a finer one at a third of the points. The balance goal's best η usually lies
      inside the passing range, which the bisection skips: with ``balance`` (the rewrite balances)
      each factor's passing range is walked ascending instead, as ``ascending`` does, before the
      refinement.

    Points are returned ordered by (f, η). ``reuse_lower_blocks=False`` runs full passes
    (benchmarks compare the two). ``reference`` (stage decoder_base, made for these inputs:
    ``checked_reference``; None makes it here, ``decoder_reference``): its base point is taken as
    measured, and its recorded states feed the edited blocks, when they enter a block at or below
    θ's first (exact: the blocks below are never edited); otherwise every point runs full
    passes."""
    editor = WeightEditor(base.model, space)
    batch_size = settings.batch_size
    first = first_edited_block(space) if reuse_lower_blocks else None
    if reference is None:  # measure the base point here, recording the states at θ's first block
        reference = decoder_reference(base, probe, lms_set, batch_size, first)
    base_point = reference.base_point
    usable = first is not None and reference.first is not None and reference.first <= first
    cache = (
        LowerBlockCache.recorded(base.model, reference.first, reference.states)
        if usable
        else LowerBlockCache(base.model, None)
    )
    floor = settings.lms_ratio * base_point["lms"]
    factors, rates = sorted(settings.feature_factors), sorted(settings.learning_rates)
    points: dict[tuple[float, float], dict] = {}
    total = len(factors) * len(rates) if settings.search != "bracket" else None
    bar = progress(total=total, desc=f"decoder grid ({settings.search})")
    guess = None  # bracket: the boundary the previous factor had, where the next search starts

    def passes(f: float, lr: float) -> bool:
        if (f, lr) not in points:
            editor.apply_gradiend(gradiend, f, lr)
            try:
                measured = measure(base, probe, lms_set, batch_size, cache)
            finally:
                editor.restore()
            points[(f, lr)] = {"feature_factor": float(f), "learning_rate": float(lr), **measured}
            bar.update(1)
        return points[(f, lr)]["lms"] >= floor

    for f in factors:
        if settings.search == "bracket":
            if balance:
                lo = next((i for i, lr in enumerate(rates) if not passes(f, lr)), len(rates)) - 1
                hi = lo + 1
            else:
                lo, hi = bracket_boundary(lambda i, f=f: passes(f, rates[i]), len(rates), guess)
                guess = lo
            if lo >= 0 and hi < len(rates):
                refine_between(lambda lr, f=f: passes(f, lr), rates[lo], rates[hi], settings)
            continue
        for lr in rates:
            if not passes(f, lr) and settings.search == "ascending":
                break
    bar.close()
    return base_point, [points[k] for k in sorted(points)]


def bracket_boundary(passes, count: int, guess: int | None = None) -> tuple[int, int]:
    """Bisection over indices 0..count-1 for the boundary between passing and failing points,
    assuming every passing index comes before every failing one: returns (last passing index or
    -1, first failing index or ``count``), calling ``passes(i)`` about log2(count + 1) times.

    ``guess``: the last passing index expected (the boundary another feature factor had). The
    search then starts there and gallops away from it (steps 1, 2, 4, …) until the boundary is
    bracketed, then bisects: two calls when the guess is right, one more per doubling of its
    error. Same result as without a guess."""
    lo, hi = -1, count
    if guess is not None and count:
        at = min(max(guess, 0), count - 1)
        step = 1
        if passes(at):
            lo = at
            while lo + step < hi:
                if not passes(lo + step):
                    hi = lo + step
                    break
                lo, step = lo + step, step * 2
        else:
            hi = at
            while hi - step > lo:
                if passes(hi - step):
                    lo = hi - step
                    break
                hi, step = hi - step, step * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if passes(mid):
            lo = mid
        else:
            hi = mid
    return lo, hi


def refine_between(passes, good: float, bad: float, settings) -> float:
    """``settings.refine_steps`` geometric bisections of (good, bad) (η passes at ``good``, fails
    at ``bad``); returns the largest passing η found. Each midpoint is √(good·bad) rounded to 3
    significant digits; the refinement stops when rounding can no longer split the interval."""
    for _ in range(settings.refine_steps):
        mid = float(f"{math.sqrt(good * bad):.3g}")
        if not good < mid < bad:
            break
        if passes(mid):
            good = mid
        else:
            bad = mid
    return good


def select_balance(points: list[dict], base_point: dict, lms_ratio: float) -> dict | None:
    """The grid point that brings the two classes closest together under the LMS constraint.

    Goal ``balance`` (§7.5): among *all* points (both feature factors) with
    LMS >= ``lms_ratio`` × base LMS, the smallest ``balance_gap``
    (mean over both classes' test rows of |P(A) - P(B)| / (P(A) + P(B))) wins; ties go to the
    smaller η, then to the smaller f. If no point qualifies, the smallest η is reported (among the
    points at that η the smallest gap, then the smaller f) with ``constraint_met: false``, the same
    fallback as strengthening. Only grid points compete, never the unedited model, so the chosen
    gap can exceed the base gap (the rewrite then reports that it did not move the requested way).

    Returns ``{feature_factor, learning_rate, value, constraint_met}`` (``value`` = the chosen
    point's gap; the base gap is ``base_point['balance_gap']``), or None for an empty grid. The
    record is this small because metrics/evaluate_decoder.json holds at most 60 values; the LMS
    ratio of the point is in plots/evaluate_decoder/grid.csv and, re-measured, in
    metrics/rewrite.json.
    """
    if not points:
        return None
    passing = [p for p in points if p["lms"] >= lms_ratio * base_point["lms"]]
    if passing:
        chosen = min(
            passing, key=lambda p: (p["balance_gap"], p["learning_rate"], p["feature_factor"])
        )
    else:
        chosen = min(
            points, key=lambda p: (p["learning_rate"], p["balance_gap"], p["feature_factor"])
        )
    return {
        "feature_factor": chosen["feature_factor"],
        "learning_rate": chosen["learning_rate"],
        "value": chosen["balance_gap"],
        "constraint_met": bool(passing),
    }


def select(
    points: list[dict],
    base_point: dict,
    context: GradiendContext,
    lms_ratio: float,
    balance: bool = True,
) -> dict[str, dict | None]:
    """Strengthen/weaken choices per class and the balance choice under the LMS constraint (§7.5).

    Keys: ``'<class>'`` (strengthen), ``'<class>_weaken'`` and ``'balance'`` (``select_balance``;
    None when ``balance`` is false: the measured points were not searched for it).
    Among the points with the right feature factor and LMS >= ``lms_ratio`` × base LMS, the one
    with the best value wins (ties: the smaller η); a higher ``lms_ratio`` protects fluency at the
    cost of a smaller shift.
    """
    pair = context.pair
    out: dict[str, dict | None] = {}
    for cls in pair.classes:
        goals = (
            (cls, context.strengthen_factor(cls), pair.other(cls), 1),
            (f"{cls}_weaken", context.weaken_factor(cls), cls, -1),
        )
        for key, factor, dataset, sign in goals:

            def metric(
                point: dict, cls: str = cls, dataset: str = dataset, sign: int = sign
            ) -> float:
                p = point["probs_by_dataset"][dataset][cls]
                return p if sign > 0 else 1.0 - p

            candidates = [p for p in points if p["feature_factor"] == factor]
            if not candidates:
                out[key] = None
                continue
            passing = [p for p in candidates if p["lms"] >= lms_ratio * base_point["lms"]]
            if passing:
                chosen = max(passing, key=lambda p, m=metric: (m(p), -p["learning_rate"]))
            else:
                chosen = min(candidates, key=lambda p: p["learning_rate"])
            out[key] = {
                "class": cls,
                "direction": "strengthen" if sign > 0 else "weaken",
                "rows_of_class": dataset,
                "value": metric(chosen),
                "base_value": metric(base_point),
                "feature_factor": chosen["feature_factor"],
                "learning_rate": chosen["learning_rate"],
                "lms": chosen["lms"],
                "lms_ratio": chosen["lms"] / base_point["lms"],
                "constraint_met": bool(passing),
            }
    # A search that skipped the passing range (bracket without balance) has no balance choice.
    out["balance"] = select_balance(points, base_point, lms_ratio) if balance else None
    return out


def grid_table(points: list[dict], base_point: dict, pair: ClassPair) -> pd.DataFrame:
    """One row per grid point: LMS ratio, balance gap, P(C) on each class's rows, and the shift of
    the mean P(C) over all test rows against the base model (the decoder plots read this)."""
    classes = pair.classes

    def mean_p(point: dict, c: str) -> float:
        return sum(point["probs_by_dataset"][d][c] for d in classes) / len(classes)

    rows = []
    for p in points:
        row = {
            "feature_factor": p["feature_factor"],
            "learning_rate": p["learning_rate"],
            "lms": p["lms"],
            "lms_ratio": p["lms"] / base_point["lms"],
            "balance_gap": p["balance_gap"],
        }
        row.update({f"p_{c}_on_{d}": p["probs_by_dataset"][d][c] for c in classes for d in classes})
        row.update({f"delta_p_{c}": mean_p(p, c) - mean_p(base_point, c) for c in classes})
        rows.append(row)
    return pd.DataFrame(rows)
