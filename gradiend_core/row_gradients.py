"""One gradient vector per row for many rows from one batched pass (docs/method.md §4.2).

The validation, test and neutral rows each need a gradient vector of their own. One row at a time
that costs a forward and a backward pass per row at a batch of one. Here the rows of a batch share
one pass (packed or padded so that no row sees another, ``tokens.causal_batch``), and each row's
weight gradients are assembled from what the backward pass computes anyway. For a linear map
y = x Wᵀ + b of θ, at every token t the input x_t and δ_t = ∂L/∂y_t are known, and since only row
r's loss depends on the outputs at r's tokens, the gradient of the summed loss L = Σ_r L_r splits
by row:

    ∂L_r/∂W[o, i] = Σ_{t ∈ r} δ_t[o] · x_t[i],        ∂L_r/∂b[o] = Σ_{t ∈ r} δ_t[o]

and for a norm y = w ⊙ x̂ (+ b), or (1 + w) ⊙ x̂ (Gemma), ∂L_r/∂w = Σ_{t ∈ r} δ_t ⊙ x̂_t, summed
also over the heads when the norm sees one vector per head and token (Gemma 3's and Qwen 3's
query/key norms; the token axis of their input is read off a probe pass). Only the
kept coordinates of θ are formed (a gather of two columns per coordinate), never a weight-gradient
matrix: θ's weights do not require grad during the pass, the backward starts at the hidden states
entering θ's lowest block, and module hooks record x_t and δ_t.

Modules of other kinds (an embedding in θ, a custom layer) make ``RowGradients.supported`` false,
and the caller computes the rows one at a time instead. The vectors equal the one-row-at-a-time
ones up to float rounding (``tests/test_row_gradients.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from gradiend_core.base_model import ParamSpace
from gradiend_core.block_cache import block_list, first_edited_block

# Above this many gathered (token, coordinate) products per tensor the per-row products are formed
# as one small matrix product per row instead (e.g. a tensor kept whole).
GATHER_LIMIT = 1 << 24
NORM_RTOL, NORM_ATOL = 1e-5, 1e-6
PROBE_TOKENS = 5  # the probe pass's length: a per-head input's token axis is the one of this size


@dataclass(frozen=True)
class _Part:
    """One tensor of θ: where its kept coordinates sit in the flat vector and in the tensor."""

    module: str
    param: str  # "weight" | "bias"
    offset: int
    index: torch.Tensor | None  # kept flat indices inside the tensor (None = all)
    count: int


def _module_kind(module: nn.Module, param: str) -> str | None:
    if param not in ("weight", "bias"):
        return None
    if isinstance(module, nn.Linear):
        return "linear"
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None:
        return "conv1d"  # transformers' GPT-2 layer: y = x W + b, W is (in, out)
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 1:
        return "norm"
    return None


def _norm_rule(module: nn.Module) -> tuple[str, str, float] | None:
    """How a norm module maps its input: ('rms' | 'layer', 'w' | '1+w', eps), found by checking
    the candidate formulas against the module on a fixed random input; None if none fits."""
    eps = getattr(module, "variance_epsilon", None)
    if eps is None:
        eps = getattr(module, "eps", None)
    if eps is None:
        return None
    width = module.weight.shape[0]
    x = torch.randn(3, width, generator=torch.Generator().manual_seed(0)) * 2 + 0.5
    x = x.to(module.weight.device, module.weight.dtype)
    with torch.no_grad():
        try:
            y = module(x).float()
        except Exception:  # noqa: BLE001 - an unusual module: not ours to handle
            return None
        w = module.weight.float()
        b = module.bias.float() if getattr(module, "bias", None) is not None else 0.0
        for kind in ("rms", "layer"):
            hat = _normalised(x, kind, float(eps))
            for scale in ("w", "1+w"):
                factor = w if scale == "w" else 1.0 + w
                if torch.allclose(factor * hat + b, y, rtol=NORM_RTOL, atol=NORM_ATOL):
                    return kind, scale, float(eps)
    return None


def _normalised(x: torch.Tensor, kind: str, eps: float) -> torch.Tensor:
    x = x.float()
    if kind == "rms":
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).pow(2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


class RowGradients:
    """Per-row gradient vectors over the kept coordinates of θ from one batched backward pass."""

    def __init__(self, model: nn.Module, space: ParamSpace):
        self.model = model
        self.size = space.size
        self.parts: dict[str, list[_Part]] = {}
        self.kinds: dict[str, str] = {}
        self.norm_rules: dict[str, tuple[str, str, float]] = {}
        self.token_axis: dict[str, int] = {}  # per-head norms: the token axis of their input
        self.first = first_edited_block(space)
        found = block_list(model)
        self._static = self.first is not None and found is not None
        self._reaches: bool | None = None
        if not self._static:
            return
        self.blocks = found[2]
        modules = dict(model.named_modules())
        offset = 0
        for name, index, shape in zip(
            space.names, space.local_indices(), space.shapes, strict=True
        ):
            count = int(torch.Size(shape).numel()) if index is None else len(index)
            module_name, _, param = name.rpartition(".")
            module = modules.get(module_name)
            kind = _module_kind(module, param) if module is not None else None
            if kind == "norm":
                rule = self.norm_rules.get(module_name) or _norm_rule(module)
                if rule is None:
                    kind = None
                else:
                    self.norm_rules[module_name] = rule
            if kind is None:
                self._static = False
                return
            self.kinds[module_name] = kind
            self.parts.setdefault(module_name, []).append(
                _Part(module_name, param, offset, index, count)
            )
            offset += count

    @property
    def supported(self) -> bool:
        """Every tensor of θ sits in a module of a known kind, at or above θ's lowest block (a
        tensor below it, such as BERT's embedding LayerNorm, is not on the backward path that
        starts there), applied to one vector per token, or, for a norm, to one per head and
        token with a token axis that can be told apart (Gemma 3's q/k norms); checked once with a
        five-token pass."""
        if not self._static:
            return False
        if self._reaches is None:
            self._reaches = self._every_module_on_the_path()
        return self._reaches

    def _every_module_on_the_path(self) -> bool:
        store: dict = {}
        device = next(self.model.parameters()).device
        vocab = self.model.get_input_embeddings().weight.shape[0]
        ids = torch.tensor([[i % vocab for i in range(1, PROBE_TOKENS + 1)]], device=device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            with torch.enable_grad(), self._recording(store):
                self.model(input_ids=ids, use_cache=False)
        except Exception:  # noqa: BLE001 - an unusual model: the per-row path handles it
            return False
        finally:
            for p in params:
                p.requires_grad_(True)
        tokens = ids.numel()
        for name in self.parts:
            axes = set()
            for slot in store[name]:
                x = slot["x"]
                if not slot["reached"]:
                    return False
                if x.numel() == tokens * x.shape[-1]:
                    axes.add(None)  # one input vector per token
                    continue
                # one vector per head and token: the token axis must be the only one of its size
                found = [i for i, size in enumerate(x.shape[1:-1], 1) if size == tokens]
                if self.kinds[name] != "norm" or x.shape[0] != 1 or len(found) != 1:
                    return False
                axes.add(found[0])
            if len(axes) != 1:
                return False
            axis = axes.pop()
            if axis is not None:
                self.token_axis[name] = axis
        return True

    @contextmanager
    def _recording(self, store: dict):
        """Hooks: the hidden states entering block ``first`` start the graph; every module of θ
        records its inputs and, during the backward pass, the gradients at its outputs."""
        modules = dict(self.model.named_modules())
        handles = []

        store["start"] = []

        def start(_module, args, kwargs):
            if args:
                hidden = args[0].detach().requires_grad_(True)
                store["start"].append(hidden)
                return (hidden, *args[1:]), kwargs
            hidden = kwargs["hidden_states"].detach().requires_grad_(True)
            store["start"].append(hidden)
            return args, {**kwargs, "hidden_states": hidden}

        handles.append(self.blocks[self.first].register_forward_pre_hook(start, with_kwargs=True))
        for name in self.parts:
            calls: list = []
            store[name] = calls

            def record(_module, args, kwargs, output, calls=calls):
                x = args[0] if args else next(iter(kwargs.values()))
                slot = {"x": x.detach(), "reached": output.requires_grad}
                calls.append(slot)
                if output.requires_grad:
                    output.register_hook(lambda g, slot=slot: slot.__setitem__("delta", g))

            handles.append(modules[name].register_forward_hook(record, with_kwargs=True))
        try:
            yield
        finally:
            for h in handles:
                h.remove()

    def vectors(
        self,
        row_losses: Callable[[], torch.Tensor],
        row_of_token: torch.Tensor,
        rows: int,
    ) -> torch.Tensor:
        """(rows, n): the gradient of each row's loss over the kept coordinates.

        ``row_losses`` runs the model's forward pass on the batch and returns the (rows,) losses;
        ``row_of_token`` gives the row of every token of the batch in the flattened (B·T) order
        of the model's hidden states (padding tokens may belong to any row: their output
        gradients are 0)."""
        store: dict = {}
        params = [p for p in self.model.parameters() if p.requires_grad]
        for p in params:
            p.requires_grad_(False)
        try:
            with torch.enable_grad(), self._recording(store):
                losses = row_losses()
                if not store["start"]:
                    raise RuntimeError("θ's lowest block did not run")
                torch.autograd.grad(losses.sum(), store["start"], allow_unused=True)
        finally:
            for p in params:
                p.requires_grad_(True)
        device = row_of_token.device
        out = torch.zeros(rows, self.size, dtype=torch.float32, device=device)
        for name, parts in self.parts.items():
            axis = self.token_axis.get(name)
            for slot in store[name]:
                delta = slot.get("delta")
                if delta is None:  # the output did not reach any loss
                    continue
                x, delta = (_per_token(t, axis) for t in (slot["x"], delta))
                for part in parts:
                    self._add(out, part, name, x, delta, row_of_token, rows)
        return out

    def _add(self, out, part: _Part, name: str, x, delta, row_of, rows: int) -> None:
        kind = self.kinds[name]
        span = slice(part.offset, part.offset + part.count)
        if part.param == "bias":
            delta = _over_heads(delta)
            cols = delta if part.index is None else delta[:, part.index]
            out[:, span] += _per_row(cols, row_of, rows)
            return
        if kind == "norm":
            rule, _, eps = self.norm_rules[name]
            hat = _normalised(x, rule, eps)
            prod = _over_heads(delta * hat)
            cols = prod if part.index is None else prod[:, part.index]
            out[:, span] += _per_row(cols, row_of, rows)
            return
        # weight of a linear map: (out, in) for nn.Linear, (in, out) for Conv1D
        a, b = (delta, x) if kind == "linear" else (x, delta)
        width = b.shape[1]
        if part.index is not None and part.count * len(row_of) <= GATHER_LIMIT:
            prod = a[:, part.index // width] * b[:, part.index % width]
            out[:, span] += _per_row(prod, row_of, rows)
            return
        for r in range(rows):  # one small matrix product per row
            at = row_of == r
            full = (a[at].T @ b[at]).reshape(-1)
            out[r, span] += full if part.index is None else full[part.index]


def _per_token(t: torch.Tensor, axis: int | None) -> torch.Tensor:
    """(B·T, D) float rows in the flattened token order, or (B·T, heads, D) for a module that sees
    one vector per head and token (``axis``: the token axis of its input)."""
    if axis is None:
        return t.reshape(-1, t.shape[-1]).float()
    t = t.movedim(axis, 1)
    return t.reshape(t.shape[0] * t.shape[1], -1, t.shape[-1]).float()


def _over_heads(t: torch.Tensor) -> torch.Tensor:
    """(B·T, D): a per-head module's (B·T, heads, D) values summed over the heads."""
    return t.sum(1) if t.dim() == 3 else t


def _per_row(values: torch.Tensor, row_of: torch.Tensor, rows: int) -> torch.Tensor:
    """(rows, K): the sum of ``values`` (tokens, K) over each row's tokens, as a product with the
    (rows, tokens) membership matrix (a deterministic reduction on every device, unlike a scatter
    add on a GPU)."""
    return membership(row_of, rows, values.dtype) @ values


def membership(row_of: torch.Tensor, rows: int, dtype=torch.float32) -> torch.Tensor:
    """(rows, items) 0/1 matrix: entry (r, j) is 1 when item j belongs to row r."""
    return (torch.arange(rows, device=row_of.device).unsqueeze(1) == row_of).to(dtype)
