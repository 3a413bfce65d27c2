"""Objectives -> flat gradient vectors (docs/method.md §2-§3).

For a batch of masked sentences of one transition, one forward pass of the base model gives logits
from which both losses are read; each requested vector is one backward pass:

    g_f     = ∂L(x, t_factual)/∂θ            'factual'
    g_a     = ∂L(x, t_alternative)/∂θ        'alternative'
    g_f-g_a = ∂(L_f - L_a)/∂θ                'diff'   (one backward, by linearity)

``L`` is the mean cross-entropy over the batch's labelled positions, so a vector is the batch-mean
gradient (plain loss gradient, not negated). Only θ's tensors require grad, and only the kept
coordinates are copied into one flat float32 vector. Causal inputs follow the token convention of
``gradiend_core.tokens`` (§2.4).
"""

from __future__ import annotations

import random
from collections.abc import Callable

import pandas as pd
import torch
from torch import nn

from gradiend_core.base_model import BaseModel, ParamSpace, set_requires_grad
from gradiend_core.errors import GradiendError
from gradiend_core.feature import ClassPair
from gradiend_core.lower_states import RowStates, states_block
from gradiend_core.mlm_head import MlmHead, build_masked_batch, pooled_mask_states
from gradiend_core.row_gradients import RowGradients, membership
from gradiend_core.runtime import progress
from gradiend_core.segments import Segments
from gradiend_core.tokens import (
    causal_batch,
    causal_prefix_ids,
    require_single_token,
    single_token_id,
)
from gradiend_core.vectors import BatchVectors, GradientStore, RowVectors

VECTOR_KINDS = ("factual", "alternative", "diff")

LossFn = Callable[[torch.Tensor], torch.Tensor]

# A neutral row's next-token target sits at least this many tokens into the sentence, so the
# prediction has some context (docs/method.md §1.6).
NEUTRAL_MIN_PREFIX_TOKENS = 5

# Validation, test and neutral rows whose one-per-row vectors share one pass (row_gradients.py);
# the vectors equal one pass per row up to float rounding, whose bits depend on this grouping.
ROW_BATCH = 16


def check_objective(objective: str, base: BaseModel, head: MlmHead | None) -> None:
    if objective == "mlm" and (base.kind != "masked" or base.tokenizer.mask_token is None):
        raise GradiendError(
            "params.yaml: 'gradient.objective' = 'mlm' needs a masked LM (a *ForMaskedLM model with"
            " a mask token); use 'clm_mlm_head' or 'clm_next_token' for decoder-only models."
        )
    if objective.startswith("clm") and base.kind != "causal":
        raise GradiendError(
            f"params.yaml: 'gradient.objective' = {objective!r} needs a causal (decoder-only)"
            " model; use 'mlm' for masked LMs."
        )
    if objective == "clm_mlm_head" and head is None:
        raise GradiendError(
            "models/mlm_head: no trained head, but 'gradient.objective' is 'clm_mlm_head'; rerun"
            " 'dvc repro mlm_head'."
        )


class GradientComputer:
    """Computes flat gradient vectors over the kept coordinates of θ for one objective."""

    def __init__(
        self,
        base: BaseModel,
        space: ParamSpace,
        objective: str,
        mask: str,
        max_length: int,
        head: MlmHead | None = None,
        states: RowStates | None = None,
    ):
        check_objective(objective, base, head)
        # clm_mlm_head: the rows' stored states entering θ's lowest block (stage lower_states);
        # every pass then runs only the blocks above them. States stored above θ's lowest block
        # (made for another θ, e.g. a benchmark's whole backbone) cannot serve: full passes then.
        lowest = states_block(space)
        usable = states is not None and lowest is not None and states.first <= lowest
        self.states = states if usable else None
        self.base, self.space, self.objective, self.mask, self.max_length = (
            base,
            space,
            objective,
            mask,
            max_length,
        )
        self.head = head.to(base.device).requires_grad_(False) if head is not None else None
        self.tensors = set_requires_grad(base.model, space)
        self.local = space.local_indices()
        # Every θ tensor kept whole: ``vectors(flat=False)`` then hands out autograd's own tensors.
        self.whole_tensors = all(idx is None for idx in self.local)
        self.size = space.size
        self._token_cache: dict[str, int] = {}
        self.rows = RowGradients(base.model, space)

    # ---- targets -------------------------------------------------------------------------------
    def target_index(self, word: str) -> int:
        """The label of ``word`` for this objective: a head class index or a vocabulary id."""
        if self.objective == "clm_mlm_head":
            return self.head.label_index(word)
        if word not in self._token_cache:
            token = single_token_id(self.base.tokenizer, word, self.base.kind)
            if (
                token is None
            ):  # a rare casing variant (e.g. 'HE') may split; its lowercase form is the class word
                token = require_single_token(self.base.tokenizer, word.lower(), self.base.kind)
            self._token_cache[word] = token
        return self._token_cache[word]

    # ---- forward passes returning loss functions -------------------------------------------------
    def _next_token_logits(self, prefixes: list[list[int]]) -> torch.Tensor:
        """(B, V) logits of the token after each prefix (last position of each sequence of a
        packed, or left-padded, batch: ``tokens.causal_batch``)."""
        return self._next_token_rows(prefixes).forward()

    def _masked_batch(self, masked: list[str]):
        """The ``clm_mlm_head`` batch of ``masked`` (packed when the model allows, carrying the
        rows' stored lower-block states when there are any)."""
        return build_masked_batch(
            self.base.tokenizer,
            masked,
            self.mask,
            self.max_length,
            self.head.pooling_length,
            self.base.model,
            self.states,
        )

    def _loss_fn(self, masked: list[str]) -> LossFn:
        tok = self.base.tokenizer
        if self.objective == "clm_next_token":
            prefixes = [causal_prefix_ids(tok, m, self.mask, self.max_length) for m in masked]
            logits = self._next_token_logits(prefixes)
            return lambda t: nn.functional.cross_entropy(logits, t.to(logits.device))
        if self.objective == "clm_mlm_head":
            batch = self._masked_batch(masked)
            pooled = pooled_mask_states(
                self.base.model, batch, self.head.mask_embedding, self.head.pooling_length
            )
            logits = self.head.classifier(pooled.float())  # (M, C)
            rows = batch.mask_rows.to(logits.device)
            return lambda t: nn.functional.cross_entropy(logits, t.to(logits.device)[rows])
        enc, rows, cols = self._masked_lm_inputs(masked)
        logits = self.base.model(**enc).logits[rows, cols].float()  # (M, V)
        return lambda t: nn.functional.cross_entropy(logits, t.to(logits.device)[rows])

    def _masked_lm_inputs(self, masked: list[str]) -> tuple[dict, torch.Tensor, torch.Tensor]:
        """A masked LM's right-padded batch of the rows, with (row, column) of every mask; a
        row whose every mask was cut off by ``gradient.max_length`` is a one-line error."""
        tok = self.base.tokenizer
        texts = [m.replace(self.mask, tok.mask_token) for m in masked]
        enc = tok(
            texts, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length
        )
        enc = {k: v.to(self.base.device) for k, v in enc.items()}
        rows, cols = (enc["input_ids"] == tok.mask_token_id).nonzero(as_tuple=True)
        if len(set(rows.tolist())) != len(masked):
            raise GradiendError(
                f"a masked row lost its {self.mask!r} to truncation (gradient.max_length ="
                f" {self.max_length}); raise gradient.max_length or lower data.max_words."
            )
        return enc, rows, cols

    # ---- gradients -------------------------------------------------------------------------------
    def _pieces(self, grads: tuple[torch.Tensor, ...]) -> Segments:
        """The kept coordinates of each θ tensor's gradient (a whole tensor: a view)."""
        return Segments(
            g.reshape(-1) if idx is None else g.reshape(-1)[idx.to(g.device)]
            for g, idx in zip(grads, self.local, strict=True)
        )

    def _flatten(self, grads: tuple[torch.Tensor, ...]) -> torch.Tensor:
        out = torch.empty(self.size, dtype=torch.float32, device=self.base.device)
        at = 0
        for part in self._pieces(grads):
            out[at : at + part.numel()] = part
            at += part.numel()
        return out

    def _backward(
        self,
        losses: dict[str, Callable[[], torch.Tensor]],
        kinds: tuple[str, ...],
        where: str,
        texts: list[str],
        flat: bool = True,
    ) -> dict[str, torch.Tensor | Segments]:
        out = {}
        for i, kind in enumerate(kinds):
            loss = losses[kind]()
            if not torch.isfinite(loss):
                raise GradiendError(
                    f"{where}: the {kind} loss is {loss.item()} for example {texts[0][:80]!r};"
                    " check the base model weights and runtime.dtype (float32 is safest)."
                )
            grads = torch.autograd.grad(loss, self.tensors, retain_graph=i < len(kinds) - 1)
            if not flat:
                out[kind] = self._pieces(grads)  # unchecked: see ``vectors``
                continue
            vector = self._flatten(grads)
            # One sum instead of an elementwise test (a 35M-entry vector: ~10 ms vs ~150 ms): a
            # NaN or inf entry makes the sum non-finite, and so would only an absurd overflow.
            if not torch.isfinite(vector.sum()):
                raise GradiendError(
                    f"{where}: the {kind} gradient has NaN/inf entries for example"
                    f" {texts[0][:80]!r}; check the base model weights and runtime.dtype (float32"
                    " is safest)."
                )
            out[kind] = vector
        return out

    def vectors(
        self,
        masked: list[str],
        factual: list[str],
        alternative: list[str],
        kinds: tuple[str, ...],
        where: str = "gradient",
        flat: bool = True,
    ) -> dict[str, torch.Tensor | Segments]:
        """Batch-mean gradient vectors of the requested kinds, from one shared forward pass.

        ``flat=False`` returns each vector as ``Segments`` (one piece per θ tensor, in place of a
        copy into one n-sized vector) for ``Gradiend.fused_update`` to read directly, as a
        training step that computes its gradients on the fly would; such vectors skip the NaN/inf
        scan (a pass over n coordinates): the update's loss turns non-finite instead. It pays when
        θ's tensors are kept whole (``whole_tensors``: the pieces are autograd's own tensors); a
        pruned tensor's kept coordinates are gathered anyway, and a hundred small pieces make the
        update run a hundred small chunks, so a flat vector is cheaper there."""
        for kind in kinds:
            if kind not in VECTOR_KINDS:
                raise ValueError(kind)
        loss_of = self._loss_fn(masked)
        t_f = torch.tensor([self.target_index(w) for w in factual])
        t_a = torch.tensor([self.target_index(w) for w in alternative])
        losses = {
            "factual": lambda: loss_of(t_f),
            "alternative": lambda: loss_of(t_a),
            "diff": lambda: loss_of(t_f) - loss_of(t_a),
        }
        return self._backward(losses, tuple(kinds), where, masked, flat)

    def _neutral_draw(self, text: str, rng: random.Random):
        """A neutral sentence's seeded target (§1.6): causal models cut at a random position >=
        NEUTRAL_MIN_PREFIX_TOKENS and predict the next token, ``(prefix ids, next id)``; masked
        LMs mask one random ordinary token, ``((ids with the mask, its position), its id)``."""
        tok = self.base.tokenizer
        ids = tok(text, add_special_tokens=True, truncation=True, max_length=self.max_length)[
            "input_ids"
        ]
        special = set(tok.all_special_ids)
        if self.base.kind == "causal":
            cuts = [
                c
                for c in range(min(NEUTRAL_MIN_PREFIX_TOKENS, len(ids) - 1), len(ids))
                if c > 0 and ids[c] not in special
            ]
            if not cuts:
                raise GradiendError(
                    f"neutral sentence too short for a next-token target: {text[:80]!r}; raise"
                    " data.min_words."
                )
            cut = rng.choice(cuts)
            return ids[:cut], ids[cut]
        positions = [i for i, t in enumerate(ids) if t not in special]
        if not positions:
            raise GradiendError(f"neutral sentence has no ordinary token: {text[:80]!r}.")
        pos = rng.choice(positions)
        return (ids[:pos] + [tok.mask_token_id] + ids[pos + 1 :], pos), ids[pos]

    def neutral_vector(self, text: str, rng: random.Random) -> torch.Tensor:
        """Factual gradient of one randomly chosen ordinary token of a neutral sentence (label 0
        rows).

        Causal models (both clm objectives, §2.5): cut at a position >= NEUTRAL_MIN_PREFIX_TOKENS
        and predict the next token. Masked LMs: mask one random non-special token and predict it.
        """
        source, token = self._neutral_draw(text, rng)
        target = torch.tensor([token])
        if self.base.kind == "causal":
            logits = self._next_token_logits([source])
        else:
            masked_ids, pos = source
            ids = torch.tensor([masked_ids], device=self.base.device)
            logits = self.base.model(input_ids=ids).logits[0, pos : pos + 1].float()
        loss = lambda: nn.functional.cross_entropy(logits, target.to(logits.device))  # noqa: E731
        return self._backward({"factual": loss}, ("factual",), "neutral encoder row", [text])[
            "factual"
        ]

    # ---- many rows in one pass, one vector per row (row_gradients) ----------------------------
    def row_batch(self, masked: list[str]) -> RowBatch:
        """The masked rows laid out for one pass whose ``forward(targets)`` returns each row's
        loss (the mean over its masks), as ``_loss_fn`` does for one row."""
        tok = self.base.tokenizer
        if self.objective == "clm_next_token":
            prefixes = [causal_prefix_ids(tok, m, self.mask, self.max_length) for m in masked]
            return self._next_token_rows(prefixes)
        if self.objective == "clm_mlm_head":
            batch = self._masked_batch(masked)

            def forward() -> torch.Tensor:
                pooled = pooled_mask_states(
                    self.base.model, batch, self.head.mask_embedding, self.head.pooling_length
                )
                return self.head.classifier(pooled.float())  # (M, C)

            def loss(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                owner = batch.mask_rows.to(logits.device)
                ce = nn.functional.cross_entropy(
                    logits, t.to(logits.device)[owner], reduction="none"
                )
                return _per_row_mean(ce, owner, len(masked))

            return RowBatch(batch.sequences.row_of_token(), len(masked), forward, loss)
        enc, owner, cols = self._masked_lm_inputs(masked)
        width = enc["input_ids"].shape[1]

        def forward() -> torch.Tensor:
            return self.base.model(**enc).logits[owner, cols].float()  # (M, V)

        def loss(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            ce = nn.functional.cross_entropy(logits, t.to(logits.device)[owner], reduction="none")
            return _per_row_mean(ce, owner, len(masked))

        rows_of = torch.arange(len(masked)).repeat_interleave(width)
        return RowBatch(rows_of, len(masked), forward, loss)

    def _next_token_rows(self, prefixes: list[list[int]]) -> RowBatch:
        if any(len(p) == 0 for p in prefixes):
            raise GradiendError(
                "an example has no left context before the mask; raise data.min_left_context_words"
                " (causal models predict from the left context)."
            )
        batch = causal_batch(
            self.base.model,
            [p[-self.max_length :] for p in prefixes],
            self.base.tokenizer.pad_token_id,
        )
        dev = self.base.device

        def forward() -> torch.Tensor:
            out = self.base.model(
                **batch.inputs(dev), logits_to_keep=batch.last_token_keep(dev), use_cache=False
            )
            return batch.last_token_rows(out.logits).float()

        def loss(logits: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return nn.functional.cross_entropy(logits, t.to(logits.device), reduction="none")

        return RowBatch(batch.row_of_token(), len(prefixes), forward, loss)

    def _row_vectors_of(self, batch: RowBatch, loss_of, where: str, texts: list[str]):
        """(R, n) from one pass; the same one-line errors as ``_backward`` for a row whose loss
        or vector is not finite."""

        def losses() -> torch.Tensor:
            out = batch.forward()  # one pass; every loss of the rows is read from it
            values = loss_of(lambda t: batch.loss(out, t))
            bad = (~torch.isfinite(values)).nonzero()
            if len(bad):
                i = int(bad[0])
                raise GradiendError(
                    f"{where} {i}: the loss is {float(values[i])} for example {texts[i][:80]!r};"
                    " check the base model weights and runtime.dtype (float32 is safest)."
                )
            return values

        matrix = self.rows.vectors(losses, batch.row_of_token.to(self.base.device), batch.rows)
        bad = (~torch.isfinite(matrix.sum(1))).nonzero()  # as in _backward
        if len(bad):
            i = int(bad[0])
            raise GradiendError(
                f"{where} {i}: the gradient has NaN/inf entries for example {texts[i][:80]!r};"
                " check the base model weights and runtime.dtype (float32 is safest)."
            )
        return matrix

    def rows_vectors(
        self,
        masked: list[str],
        factual: list[str],
        alternative: list[str],
        kind: str,
        where: str = "example",
    ) -> torch.Tensor:
        """(R, n): one ``kind`` vector per masked row, all rows in one pass (``RowGradients``);
        equal to ``vectors`` called on each row alone, up to float rounding."""
        t_f = torch.tensor([self.target_index(w) for w in factual])
        t_a = torch.tensor([self.target_index(w) for w in alternative])
        loss_of = {
            "factual": lambda fwd: fwd(t_f),
            "alternative": lambda fwd: fwd(t_a),
            "diff": lambda fwd: fwd(t_f) - fwd(t_a),
        }[kind]
        return self._row_vectors_of(self.row_batch(masked), loss_of, where, masked)

    def summed_vector(
        self,
        masked: list[str],
        factual: list[str],
        alternative: list[str],
        kind: str,
        where: str = "example",
    ) -> torch.Tensor:
        """(n,): the sum over the rows of each row's own ``kind`` vector (as ``vectors`` gives it
        for the row alone), from one pass over all rows: the gradient of the summed row losses,
        by linearity. Pre-pruning's importance is the mean of such vectors (§5.2)."""
        t_f = torch.tensor([self.target_index(w) for w in factual])
        t_a = torch.tensor([self.target_index(w) for w in alternative])
        batch = self.row_batch(masked)
        out = batch.forward()
        losses = {
            "factual": lambda: batch.loss(out, t_f),
            "alternative": lambda: batch.loss(out, t_a),
            "diff": lambda: batch.loss(out, t_f) - batch.loss(out, t_a),
        }[kind]()
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            i = int(bad[0])
            raise GradiendError(
                f"{where} {i}: the {kind} loss is {float(losses[i])} for example"
                f" {masked[i][:80]!r}; check the base model weights and runtime.dtype (float32"
                " is safest)."
            )
        vector = self._flatten(torch.autograd.grad(losses.sum(), self.tensors))
        if not torch.isfinite(vector.sum()):  # as in _backward
            raise GradiendError(
                f"{where}s from {masked[0][:40]!r}: the {kind} gradient has NaN/inf entries;"
                " check the base model weights and runtime.dtype (float32 is safest)."
            )
        return vector

    def neutral_rows_vectors(self, texts: list[str], rng: random.Random) -> torch.Tensor:
        """(R, n): ``neutral_vector`` of every text in one pass; ``rng`` makes the same draws, in
        the same order, as calling ``neutral_vector`` on each text in turn."""
        tok, dev = self.base.tokenizer, self.base.device
        draws = [self._neutral_draw(text, rng) for text in texts]
        inputs, targets = [d[0] for d in draws], [d[1] for d in draws]
        t = torch.tensor(targets)
        if self.base.kind == "causal":
            batch = self._next_token_rows(inputs)
        else:
            seqs = [i for i, _ in inputs]
            width = max(len(q) for q in seqs)
            ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
            attn = torch.zeros_like(ids)
            for r, q in enumerate(seqs):
                ids[r, : len(q)], attn[r, : len(q)] = torch.tensor(q), 1
            at = torch.tensor([p for _, p in inputs])

            def forward() -> torch.Tensor:
                logits = self.base.model(input_ids=ids.to(dev), attention_mask=attn.to(dev))
                return logits.logits[torch.arange(len(seqs), device=dev), at.to(dev)].float()

            def loss(picked: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
                return nn.functional.cross_entropy(
                    picked, target.to(picked.device), reduction="none"
                )

            rows_of = torch.arange(len(seqs)).repeat_interleave(width)
            batch = RowBatch(rows_of, len(seqs), forward, loss)
        return self._row_vectors_of(batch, lambda fwd: fwd(t), "neutral encoder row", texts)


class RowBatch:
    """A batch of rows whose losses are read one per row (``GradientComputer.row_batch``):
    ``forward()`` runs the model once, ``loss(out, targets)`` gives each row's loss from it."""

    def __init__(self, row_of_token: torch.Tensor, rows: int, forward: Callable, loss: Callable):
        self.row_of_token, self.rows = row_of_token, rows
        self.forward, self.loss = forward, loss


def _per_row_mean(losses: torch.Tensor, owner: torch.Tensor, rows: int) -> torch.Tensor:
    """(rows,): the mean of each row's losses (a row with two masks averages them)."""
    member = membership(owner.to(losses.device), rows, losses.dtype)
    return (member @ losses) / member.sum(1)


def needed_kinds(source: str, target: str) -> tuple[str, ...]:
    """The vectors a training step needs, in a fixed order (source first); 'diff' costs one
    backward."""
    return tuple(dict.fromkeys([source, target]))


def open_computer(params, base: BaseModel, space: ParamSpace) -> GradientComputer:
    """The gradient computer for the configured objective (the pipeline's MLM head and the rows'
    lower-block states are loaded when used)."""
    from gradiend_core.lower_states import load_row_states
    from gradiend_core.workspace import LOWER_STATES, MLM_HEAD

    grad = params.gradient
    head = states = None
    if grad.objective == "clm_mlm_head":
        head, states = MlmHead.load(MLM_HEAD), load_row_states(LOWER_STATES)
    return GradientComputer(
        base, space, grad.objective, params.feature.mask, grad.max_length, head, states
    )


# ---- vectors computed once and stored (the gradients stage) ----------------------------------


def fixed_batches(rows: pd.DataFrame, classes: list[str], batch_size: int) -> list[pd.DataFrame]:
    """Each class's rows cut into consecutive batches of ``batch_size`` (remainder dropped),
    classes in order. Rows keep the data stage's seeded order, so the cut is seeded too."""
    batches = []
    for cls in classes:
        pool = rows[rows["factual_class"] == cls].reset_index(drop=True)
        if len(pool) < batch_size:
            raise GradiendError(
                f"class {cls!r} has {len(pool)} training rows, fewer than train.batch_size = "
                f"{batch_size}; lower train.batch_size or add data."
            )
        for start in range(0, len(pool) - batch_size + 1, batch_size):
            batches.append(pool.iloc[start : start + batch_size])
    return batches


def require_zero_diff(vec: dict[str, torch.Tensor], factual, alternative, where: str) -> None:
    """Identity rows (alternative = factual, §1.3): g_f and g_a come from the same logits, so
    ``diff`` = ∂(L_f - L_f)/∂θ must be exactly the zero vector; anything else is a bug."""
    if "diff" in vec and list(factual) == list(alternative):
        nonzero = int(torch.count_nonzero(vec["diff"]))
        if nonzero:
            raise GradiendError(
                f"{where}: an identity row's diff vector has {nonzero} non-zero entries, but"
                " factual = alternative makes it exactly 0; report this as a bug."
            )


def batch_vectors(
    computer: GradientComputer, rows: pd.DataFrame, classes: list[str], settings
) -> BatchVectors:
    """The source and target vectors of every fixed training batch (``settings``: ``train``).

    ``classes`` are the pair's classes, then any identity classes (§1.3): an identity batch is
    cut and computed like the others; its ``diff`` vector is exactly 0 (checked), and it is
    labelled with its class so that the schedule can take it in turn."""
    kinds = needed_kinds(settings.source, settings.target)
    batches = fixed_batches(rows, classes, settings.batch_size)
    out: dict[str, list[torch.Tensor]] = {k: [] for k in kinds}
    for i, batch in enumerate(progress(batches, desc="training batch gradients")):
        where = f"training batch {i} (starting {batch['masked'].iloc[0][:40]!r})"
        factual, alternative = batch["factual"].tolist(), batch["alternative"].tolist()
        vec = computer.vectors(batch["masked"].tolist(), factual, alternative, kinds, where=where)
        require_zero_diff(vec, factual, alternative, where)
        for k in kinds:
            out[k].append(vec[k].cpu())
    classes_of = [str(b["factual_class"].iloc[0]) for b in batches]
    return BatchVectors(classes_of, {k: torch.stack(v) for k, v in out.items()})


def row_vectors(computer: GradientComputer, rows: pd.DataFrame, kind: str, what: str) -> RowVectors:
    """One ``kind`` vector per masked row, stored with the row's factual class (identity rows of
    a class outside the pair keep their class, so evaluations can group them).

    ``ROW_BATCH`` rows share one pass (``GradientComputer.rows_vectors``) when θ's modules allow
    it (``RowGradients.supported``); otherwise each row gets a pass of its own."""
    if len(rows) and computer.rows.supported:
        parts = []
        for start in progress(range(0, len(rows), ROW_BATCH), desc=f"{what} gradients"):
            chunk = rows.iloc[start : start + ROW_BATCH]
            factual, alternative = chunk["factual"].tolist(), chunk["alternative"].tolist()
            where = f"{what} example"
            matrix = computer.rows_vectors(
                chunk["masked"].tolist(), factual, alternative, kind, where=where
            )
            for i, (f, a) in enumerate(zip(factual, alternative, strict=True)):
                require_zero_diff({kind: matrix[i]}, [f], [a], f"{where} {start + i}")
            parts.append(matrix.cpu())
        matrix = torch.cat(parts)
        return RowVectors(matrix, rows["factual_class"].tolist(), rows["masked"].tolist())
    vectors = []
    rows_iter = progress(rows.itertuples(index=False), total=len(rows), desc=f"{what} gradients")
    for i, r in enumerate(rows_iter):
        where = f"{what} example {i}"
        vec = computer.vectors([r.masked], [r.factual], [r.alternative], (kind,), where=where)
        require_zero_diff(vec, [r.factual], [r.alternative], where)
        vectors.append(vec[kind].cpu())
    if not vectors:
        return RowVectors(torch.zeros(0, computer.size), [], [])
    return RowVectors(torch.stack(vectors), rows["factual_class"].tolist(), rows["masked"].tolist())


def neutral_vectors(computer: GradientComputer, texts: list[str], seed: int) -> RowVectors:
    """One factual vector per neutral sentence at a seeded random position (§1.6); ``ROW_BATCH``
    sentences share a pass as in ``row_vectors``."""
    rng = random.Random(seed)
    if not texts:
        return RowVectors(torch.zeros(0, computer.size), [], [])
    if computer.rows.supported:
        parts = [
            computer.neutral_rows_vectors(texts[start : start + ROW_BATCH], rng).cpu()
            for start in progress(range(0, len(texts), ROW_BATCH), desc="neutral")
        ]
        return RowVectors(torch.cat(parts), ["neutral"] * len(texts), list(texts))
    vectors = [computer.neutral_vector(t, rng).cpu() for t in progress(texts, desc="neutral")]
    return RowVectors(torch.stack(vectors), ["neutral"] * len(texts), list(texts))


def compute_store(
    computer: GradientComputer,
    examples: pd.DataFrame,
    validation: pd.DataFrame,
    test: pd.DataFrame,
    neutral_texts: list[str],
    pair: ClassPair,
    settings,
    neutral_seed: int,
    identity: list[str] = (),
    validation_neutral: list[str] = (),
) -> GradientStore:
    """Compute every reusable vector (the ``gradients`` stage, docs/method.md §4.2).

    Args:
        computer: gradient computer over the pre-pruned θ.
        examples: all masked rows; the train split of the pair's classes and of the
            ``identity`` classes is cut into fixed batches.
        validation, test: rows encoded during training and by the encoder evaluation (identity
            classes' rows included when they are to be reported, §1.3).
        neutral_texts: sentences for the encoder evaluation's neutral rows (may be empty).
        pair: the contrasted classes.
        settings: ``train`` params (``source``, ``target``, ``batch_size``).
        neutral_seed: picks each neutral sentence's target position.
        identity: classes outside the pair whose rows train as identity rows (label 0, target
            ``diff`` exactly 0): their batches follow the pair's in the store.
        validation_neutral: neutral sentences encoded during training (label 0; §4.5), other
            than ``neutral_texts``; their positions come from a generator seeded
            ``neutral_seed + 1``.
    """
    train_rows = examples[examples["split"] == "train"]
    return GradientStore(
        settings.source,
        settings.target,
        batch_vectors(computer, train_rows, [*pair.classes, *identity], settings),
        row_vectors(computer, validation, settings.source, "validation"),
        row_vectors(computer, test, settings.source, "test"),
        neutral_vectors(computer, neutral_texts, neutral_seed),
        neutral_vectors(computer, list(validation_neutral), neutral_seed + 1),
    )
