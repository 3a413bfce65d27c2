"""The GRADIEND encoder-decoder (docs/method.md §4.1-§4.2) and its save/load format.

    h = enc(s) = tanh(W_e ŝ + b_e)        W_e: (d, n), b_e: (d,)      s: a source gradient, (B, n)
    y = dec(h) = W_d h + b_d              W_d: (n, d), b_d: (n,)
    loss = mean((y - t)^2)                t: the target gradient, (B, n)

With MSE, tanh and a linear decoder every parameter gradient has a closed form, so a training step
needs no autograd graph over the (B, n) tensors: with R = 2 (y - t) / (B n),

    ∂/∂W_d = Rᵀ h      ∂/∂b_d = Σ_b R      ∂/∂z = (R W_d) ⊙ (1 - h²)      ∂/∂W_e = (∂/∂z)ᵀ s
    ∂/∂b_e = Σ_b ∂/∂z

``closed_form_grads`` sets them as ``.grad`` for ``torch.optim.AdamW``; ``tests/test_model.py``
pins it against autograd. Training uses ``Gradiend.fused_update`` instead: the same gradients and
the same AdamW update (torch's fused AdamW kernel, state in ``GradiendAdamW``), computed chunk by
chunk over the n coordinates in three passes, in place, without any (B, n) or n-sized temporary:

    pass 1: ‖s_b‖² and W_e s_b                    -> ŝ's scale, z, h
    pass 2: r = W_d h + b_d - t; Σ r², W_dᵀ r      -> the loss, ∂/∂z
            and, since ∂/∂W_d and ∂/∂b_d need h alone, AdamW on the chunk of W_d and b_d
    pass 3: ∂/∂W_e from s, AdamW on the chunk of W_e

Each chunk (``UPDATE_CHUNK`` coordinates) stays in cache between its operations, so the update
streams each n-sized tensor once per pass that needs it: 22 passes over memory for B = 1, AdamW's
own 18 included, where ``closed_form_grads`` + AdamW made ~50 and allocated ~9 fresh n-sized
tensors. At n = 35M it is memory-bound: ~0.13 s on one core of a 2-core CPU, ~0.09 s with the
chunks shared between two threads (``UPDATE_PARALLEL_MIN``), against ~1.6 s before.

ŝ is the encoder's view of the source (§4.1, ``input_normalization``): ``unit`` (the default) is
s / ‖s‖, the gradient's direction, so the feature value never depends on the gradient's size (which
varies ~20x between base models and between objectives: a confident prediction has a small loss
gradient); ``none`` is s itself, the reference's encoder.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gradiend_core.base_model import ParamSpace
from gradiend_core.feature import ClassPair
from gradiend_core.io import atomic_dir, load_tensors, read_json, save_tensors, write_json
from gradiend_core.segments import Segments

# How the encoder reads a source gradient (module docstring): its direction, or the raw vector.
INPUT_NORMALIZATIONS = ("unit", "none")

# Coordinates per chunk of ``Gradiend.fused_update``: 2^18 float32 = 1 MiB per tensor, so the pass-2
# temporaries (residual and two gradient chunks, 3 MiB per worker) stay in the last-level cache
# while the ~13 chunk streams go by, and n = 35M takes 135 chunks of ~8 small operations. Measured
# at n = 35.4M on a 2-core CPU: 2^16 costs ~1.5x (4x the chunks, the per-operation overhead
# shows); 2^17..2^20 are within noise of each other. The chunk size sets only the summation order
# of the reductions (float rounding), the same for every n.
UPDATE_CHUNK = 1 << 18
# On a GPU the same chunks make the update launch-bound (~10 kernel launches per chunk and pass:
# 49 ms at n = 35.4M on an H200, against ~1 ms of memory traffic), so chunks there are 32x larger
# (n = 35.4M in 5 chunks; the pass-3 temporaries at batch 8 take ~0.4 GB of device memory).
UPDATE_CHUNK_DEVICE = 1 << 23
# From this many coordinates on, a CPU update shares its chunks among up to ``UPDATE_WORKERS_MAX``
# threads (as many as torch's intra-op threads, ``runtime.num_threads``), each taking the next chunk
# when it is free and running its small operations on one torch thread (``_run``): a single thread
# streams only one or two tensors at a time and reaches ~60 % of the memory bandwidth, while
# torch's own two-thread operations pay a fork-join per operation and stall whenever a core is
# shared. Measured on 2 cores (one worker -> two):
# n = 2^20 4.1 -> 3.0 ms, 3.5M 13.4 -> 9.0 ms, 35.4M 0.13 -> 0.085 s. Every worker writes its own
# chunks and its own partial sums, so the bytes are the same for any number of workers.
UPDATE_PARALLEL_MIN = 1 << 20
UPDATE_WORKERS_MAX = 4


class Gradiend(nn.Module):
    """One-neuron (``latent_dim`` d = 1 by default) encoder-decoder over gradient vectors of size n.

    The encoder reads a source gradient and outputs the feature value h in (-1, 1); the decoder
    maps h back to a full gradient-shaped vector, the direction used to edit θ (§7.1). Parameters
    are stored as plain tensors so the closed-form step (``closed_form_grads``) and the weight
    export can address them directly.
    """

    def __init__(self, input_dim: int, latent_dim: int = 1, input_normalization: str = "none"):
        super().__init__()
        if input_normalization not in INPUT_NORMALIZATIONS:
            raise ValueError(input_normalization)
        self.input_dim, self.latent_dim = input_dim, latent_dim
        self.input_normalization = input_normalization
        self.encoder_weight = nn.Parameter(torch.zeros(latent_dim, input_dim))
        self.encoder_bias = nn.Parameter(torch.zeros(latent_dim))
        self.decoder_weight = nn.Parameter(torch.zeros(input_dim, latent_dim))
        self.decoder_bias = nn.Parameter(torch.zeros(input_dim))

    @classmethod
    def initialised(
        cls, input_dim: int, seed: int, latent_dim: int = 1, input_normalization: str = "none"
    ) -> Gradiend:
        """Encoder ~ U(±1/√n) (nn.Linear's default); decoder weight, bias ~ U(±max W_e) (§4.1)."""
        model = cls(input_dim, latent_dim, input_normalization)
        gen = torch.Generator().manual_seed(seed)
        bound = 1.0 / input_dim**0.5
        with torch.no_grad():
            model.encoder_weight.uniform_(-bound, bound, generator=gen)
            model.encoder_bias.uniform_(-bound, bound, generator=gen)
            x = float(model.encoder_weight.max())
            model.decoder_weight.uniform_(-x, x, generator=gen)
            model.decoder_bias.uniform_(-x, x, generator=gen)
        return model

    def encoder_input(self, source: torch.Tensor) -> torch.Tensor:
        """ŝ: the source as the encoder reads it (unit length per row for ``unit``; a zero row
        stays zero)."""
        if self.input_normalization == "none":
            return source
        norm = source.norm(dim=-1, keepdim=True)
        return source / torch.where(norm > 0, norm, torch.ones_like(norm))

    def encode(self, source: torch.Tensor) -> torch.Tensor:
        """(B, n) or (n,) -> (B, d) or (d,)."""
        return torch.tanh(self.encoder_input(source) @ self.encoder_weight.T + self.encoder_bias)

    def decode(self, h: torch.Tensor) -> torch.Tensor:
        """(B, d) or (d,) -> (B, n) or (n,)."""
        return h @ self.decoder_weight.T + self.decoder_bias

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(source))

    @torch.no_grad()
    def closed_form_grads(self, source: torch.Tensor, target: torch.Tensor) -> float:
        """Set ``.grad`` of all four tensors for MSE(dec(enc(source)), target); return the loss."""
        s, t = source.reshape(-1, self.input_dim), target.reshape(-1, self.input_dim)  # (B, n)
        s = self.encoder_input(s)  # ŝ: z = W_e ŝ + b_e, so ∂/∂W_e = (∂/∂z)ᵀ ŝ
        h = torch.tanh(s @ self.encoder_weight.T + self.encoder_bias)  # (B, d)
        residual = self.decode(h) - t  # (B, n)
        loss = float(residual.pow(2).mean())
        residual.mul_(2.0 / residual.numel())  # R
        grad_z = (residual @ self.decoder_weight) * (1 - h * h)  # (B, d)
        self.decoder_weight.grad = residual.T @ h
        self.decoder_bias.grad = residual.sum(0)
        self.encoder_weight.grad = grad_z.T @ s
        self.encoder_bias.grad = grad_z.sum(0)
        return loss

    @torch.no_grad()
    def fused_update(
        self,
        source: Row | Sequence[Row],
        target: Row | Sequence[Row],
        optimizer: GradiendAdamW,
        chunk: int | None = None,
    ) -> float:
        """One AdamW step on MSE(dec(enc(source)), target), in place; returns the loss.

        The gradients are ``closed_form_grads``'s and the update is ``torch.optim.AdamW``'s
        (fused kernel, amsgrad and maximize off), up to float rounding; nothing is stored in
        ``.grad``. ``source`` and ``target`` are (B, n), (n,) or B rows of n, each row a tensor
        or ``Segments`` (views are read, never copied). Any NaN or inf coordinate of a source or
        target row makes the returned loss non-finite, so callers that skip their own scan still
        catch it: a bad source is found before anything changes (weights and state untouched); a
        bad target only in the pass that also steps W_d and b_d, which are then spoilt (the
        caller stops; training raises). ``chunk`` (coordinates per chunk, default
        ``UPDATE_CHUNK`` on the CPU and ``UPDATE_CHUNK_DEVICE`` elsewhere) changes only float
        rounding.

        On the CPU every operation of the chunk loop runs on one torch thread (the setting is
        restored after); from ``UPDATE_PARALLEL_MIN`` coordinates on the chunks are shared among
        worker threads (see there), with the same bytes as one.
        """
        n, d = self.input_dim, self.latent_dim
        sources, targets = _rows(source, n), _rows(target, n)
        if len(sources) != len(targets):
            raise ValueError(f"{len(sources)} source rows but {len(targets)} target rows")
        cpu = self.decoder_bias.device.type == "cpu"
        threads = torch.get_num_threads()
        if cpu:
            torch.set_num_threads(1)
        try:
            chunk = max(1, min(chunk or (UPDATE_CHUNK if cpu else UPDATE_CHUNK_DEVICE), n))
            workers = 1
            if cpu and n >= UPDATE_PARALLEL_MIN:
                workers = max(1, min(threads, UPDATE_WORKERS_MAX))
            return self._fused_update(sources, targets, optimizer, chunk, d, workers)
        finally:
            if cpu:
                torch.set_num_threads(threads)

    def _fused_update(
        self,
        sources: list[Row],
        targets: list[Row],
        opt: GradiendAdamW,
        chunk: int,
        d: int,
        workers: int = 1,
    ) -> float:
        n, batch = self.input_dim, len(sources)
        w_e, w_d, b_d = self.encoder_weight, self.decoder_weight, self.decoder_bias
        w_e_rows = [w_e[j] for j in range(d)]  # (n,) each, contiguous
        chunks = _chunks([*sources, *targets], n, chunk)
        s_views = [_views(s, chunks) for s in sources]  # [b][chunk]
        t_views = [_views(t, chunks) for t in targets]
        dev, dt = b_d.device, b_d.dtype
        unit = self.input_normalization == "unit"
        width_max = min(chunk, n)

        # Pass 1: per chunk and row, ‖s_b‖² (unit only) and W_e s_b; summed in float64 below.
        part = torch.zeros(len(chunks), batch, 1 + d, device=dev, dtype=dt)

        def pass_1(indices: Iterator[int]) -> None:
            for ci in indices:
                i, width = chunks[ci]
                for b in range(batch):
                    s_c = s_views[b][ci]
                    if unit:
                        torch.dot(s_c, s_c, out=part[ci, b, 0])
                    for j in range(d):
                        torch.dot(s_c, w_e_rows[j][i : i + width], out=part[ci, b, 1 + j])

        _run(pass_1, len(chunks), workers)
        sums = part.double().sum(0)  # (B, 1 + d)
        if not bool(torch.isfinite(sums).all()):
            # A NaN/inf source coordinate (W_e s is then NaN or inf, ‖s‖² too): nothing is
            # touched. h alone would not show it: tanh(±inf) = ±1.
            return math.nan
        if unit:
            norm = sums[:, 0].sqrt()
            scale = torch.where(norm > 0, 1.0 / norm, torch.ones_like(norm))  # ŝ = s * scale
        else:
            scale = torch.ones(batch, device=dev, dtype=torch.float64)
        z = sums[:, 1:] * scale[:, None] + self.encoder_bias.double()
        h = torch.tanh(z).to(dt)  # (B, d)
        h_list = h.tolist()

        # The chunked AdamW tensors: W_d (chunks of its rows), b_d, and W_e row by row.
        dec = ("decoder_weight", "decoder_bias")
        dec_m, dec_v = ([m[k] for k in dec] for m in (opt.exp_avg, opt.exp_avg_sq))
        enc_m, enc_v = (list(m["encoder_weight"]) for m in (opt.exp_avg, opt.exp_avg_sq))
        dec_steps = [opt.step[k] for k in dec]
        enc_steps = [opt.step["encoder_weight"]] * d
        k = 2.0 / (batch * n)  # R = k r
        # Row weights of the chunk gradients: ∂W_d[:, j] = Σ_b k h_bj r_b, ∂b_d = Σ_b k r_b.
        dec_w = [[k * h_list[b][j] for b in range(batch)] for j in range(d)]
        bias_w = [k] * batch
        opt.begin_step()

        # Pass 2: per chunk, r = W_d h + b_d - t; Σ r² (the loss) and W_dᵀ r (for ∂/∂z) with the
        # chunk's W_d as it was, then that chunk's gradients of W_d and b_d and their AdamW step
        # (they need h only, not ∂/∂z). Each worker has its own scratch chunks.
        part = torch.zeros(len(chunks), batch, 1 + d, device=dev, dtype=dt)

        def pass_2(indices: Iterator[int]) -> None:
            r_all = torch.empty(batch, width_max, device=dev, dtype=dt)
            g_dec = torch.empty(width_max, d, device=dev, dtype=dt)
            g_bias = torch.empty(width_max, device=dev, dtype=dt)
            for ci in indices:
                i, width = chunks[ci]
                sl = slice(i, i + width)
                r, w_d_c = r_all[:, :width], w_d[sl]
                for b in range(batch):
                    torch.sub(b_d[sl], t_views[b][ci], out=r[b])
                    for j in range(d):
                        r[b].add_(w_d_c[:, j], alpha=h_list[b][j])
                    torch.dot(r[b], r[b], out=part[ci, b, 0])
                    for j in range(d):
                        torch.dot(r[b], w_d_c[:, j], out=part[ci, b, 1 + j])
                g_d, g_b = g_dec[:width], g_bias[:width]
                for j in range(d):
                    _weighted_sum(r, dec_w[j], g_d[:, j])
                _weighted_sum(r, bias_w, g_b)
                opt.fused_kernel(
                    [w_d_c, b_d[sl]],
                    [g_d, g_b],
                    [m[sl] for m in dec_m],
                    [v[sl] for v in dec_v],
                    dec_steps,
                )

        _run(pass_2, len(chunks), workers)
        sums = part.double().sum(0)  # (B, 1 + d)
        loss = float(sums[:, 0].sum()) / (batch * n)
        if not math.isfinite(loss):
            return loss  # a NaN/inf target coordinate: W_d and b_d are spoilt, the caller stops
        grad_z = k * sums[:, 1:] * (1 - h.double() ** 2)  # (B, d)
        # ∂W_e[j] = Σ_b ∂z_bj ŝ_b = Σ_b (∂z_bj scale_b) s_b.
        enc_w = (grad_z * scale[:, None]).T.tolist()  # (d, B)
        be = "encoder_bias"
        opt.fused_kernel(
            [self.encoder_bias],
            [grad_z.sum(0).to(dt)],
            [opt.exp_avg[be]],
            [opt.exp_avg_sq[be]],
            [opt.step[be]],
        )

        # Pass 3: per chunk, W_e's gradient (from s) and its AdamW step.
        def pass_3(indices: Iterator[int]) -> None:
            g_enc = torch.empty(d, width_max, device=dev, dtype=dt)
            for ci in indices:
                i, width = chunks[ci]
                sl = slice(i, i + width)
                g_e = g_enc[:, :width]
                for j in range(d):
                    _weighted_sum([v[ci] for v in s_views], enc_w[j], g_e[j])
                opt.fused_kernel(
                    [w[sl] for w in w_e_rows],
                    list(g_e),
                    [m[sl] for m in enc_m],
                    [v[sl] for v in enc_v],
                    enc_steps,
                )

        _run(pass_3, len(chunks), workers)
        return loss

    @torch.no_grad()
    def flip_sign(self, optimizer: torch.optim.Optimizer | GradiendAdamW | None = None) -> None:
        """Exact reparametrisation h -> -h: negate W_e, b_e and W_d; b_d is kept.

        tanh is odd, so enc'(s) = -enc(s) and dec'(-h) = -W_d(-h) + b_d = dec(h): reconstructions
        are unchanged (the reference also negates b_d, which is not exact — §4.4, §10). AdamW's
        first moments of the flipped tensors are negated too, so the optimiser keeps its course.
        ``optimizer`` is a ``torch.optim`` optimizer over this model's parameters or the
        ``GradiendAdamW`` of ``fused_update``.
        """
        for name in ("encoder_weight", "encoder_bias", "decoder_weight"):
            p = getattr(self, name)
            p.neg_()
            if isinstance(optimizer, GradiendAdamW):
                optimizer.negate_first_moment(name)
            elif optimizer is not None and p in optimizer.state and "exp_avg" in optimizer.state[p]:
                optimizer.state[p]["exp_avg"].neg_()

    def norms(self) -> dict[str, float]:
        """Frobenius norms of W_e and W_d (tracked during training)."""
        return {
            "encoder_norm": float(self.encoder_weight.norm()),
            "decoder_norm": float(self.decoder_weight.norm()),
        }


Row = torch.Tensor | Segments


def _rows(x: Row | Sequence[Row], n: int) -> list[Row]:
    """(B, n), (n,), one ``Segments`` or a sequence of (n,) rows / ``Segments`` -> the rows, as
    views."""
    if isinstance(x, Segments) or (isinstance(x, torch.Tensor) and x.dim() == 1):
        x = [x]
    rows = list(x)
    for row in rows:
        if isinstance(row, Segments):
            if any(piece.dim() != 1 for piece in row) or row.offsets()[-1] != n:
                shapes = [tuple(piece.shape) for piece in row][:4]
                raise ValueError(f"expected 1-D pieces of {n} coordinates in all, got {shapes}...")
        elif row.shape != (n,):
            raise ValueError(f"expected rows of {n} coordinates, got {tuple(row.shape)}")
    return rows


def _chunks(rows: list[Row], n: int, chunk: int) -> list[tuple[int, int]]:
    """(start, width) of every chunk: ``chunk`` coordinates at a time from 0, restarting at each
    piece boundary of a ``Segments`` row so that no chunk straddles two pieces (flat rows alone:
    exactly range(0, n, chunk))."""
    cuts = {0, n}
    for row in rows:
        if isinstance(row, Segments):
            cuts.update(row.offsets())
    ends = sorted(cuts)
    return [
        (i, min(chunk, b - i))
        for a, b in zip(ends, ends[1:], strict=False)
        for i in range(a, b, chunk)
    ]


def _views(row: Row, chunks: list[tuple[int, int]]) -> list[torch.Tensor]:
    """The row's coordinates [i, i + w) of every chunk, as views."""
    if not isinstance(row, Segments):
        return [row[i : i + w] for i, w in chunks]
    offsets, out, k = row.offsets(), [], 0
    for i, w in chunks:
        while offsets[k + 1] <= i:
            k += 1
        out.append(row[k][i - offsets[k] : i - offsets[k] + w])
    return out


def _claim(counter: Iterator[int], count: int) -> Iterator[int]:
    """Chunk indices drawn from ``counter`` (shared by the workers) while they are < ``count``."""
    while (ci := next(counter)) < count:
        yield ci


_POOL: ThreadPoolExecutor | None = None
_POOL_SIZE = 0


def _run(work: Callable[[Iterator[int]], None], count: int, workers: int) -> None:
    """``work(indices)`` on this thread and on ``workers - 1`` pool threads (each with one torch
    thread), the chunk indices 0..count-1 handed out one at a time to whichever worker is free, so
    a worker whose core is busy with something else takes fewer; returns when all are done (a
    worker's error is raised here). Every chunk's results go to its own slots, so the outcome does
    not depend on which worker ran it."""
    global _POOL, _POOL_SIZE
    if workers <= 1 or count < 2:
        work(iter(range(count)))
        return
    helpers = min(workers, count) - 1
    if _POOL is None or helpers > _POOL_SIZE:
        _POOL = ThreadPoolExecutor(max_workers=helpers, thread_name_prefix="gradiend-update")
        _POOL_SIZE = helpers
    counter = itertools.count()  # next() on it is atomic under the GIL

    def one_thread() -> None:
        torch.set_num_threads(1)
        with torch.no_grad():
            work(_claim(counter, count))

    futures = [_POOL.submit(one_thread) for _ in range(helpers)]
    try:
        work(_claim(counter, count))
    finally:
        for future in futures:
            future.result()


def _weighted_sum(rows, weights: list[float], out: torch.Tensor) -> None:
    """out = Σ_b weights[b] rows[b], in place."""
    torch.mul(rows[0], weights[0], out=out)
    for row, w in zip(rows[1:], weights[1:], strict=True):
        out.add_(row, alpha=w)


class GradiendAdamW:
    """AdamW state (first and second moments, step count) of a Gradiend's four tensors, for
    ``Gradiend.fused_update``; the update is ``torch.optim.AdamW(fused=True)``'s own kernel, so
    the semantics (decoupled weight decay, bias corrections, eps added to sqrt(v̂)) are torch's.

    Moments live per tensor name (``encoder_weight``, ``encoder_bias``, ``decoder_weight``,
    ``decoder_bias``), shaped like the parameter, on its device; the step is kept per tensor as
    a float32 scalar tensor, as torch's fused AdamW keeps it.
    """

    def __init__(
        self,
        model: Gradiend,
        lr: float,
        weight_decay: float,
        eps: float = 1e-8,
        betas: tuple[float, float] = (0.9, 0.999),
    ):
        self.lr, self.weight_decay, self.eps, self.betas = lr, weight_decay, eps, betas
        params = dict(model.named_parameters())
        self.exp_avg = {k: torch.zeros_like(p.detach()) for k, p in params.items()}
        self.exp_avg_sq = {k: torch.zeros_like(p.detach()) for k, p in params.items()}
        self.step = {
            k: torch.zeros((), dtype=torch.float32, device=p.device) for k, p in params.items()
        }

    def negate_first_moment(self, name: str) -> None:
        """exp_avg of ``name`` -> -exp_avg (``Gradiend.flip_sign``)."""
        self.exp_avg[name].neg_()

    def begin_step(self) -> None:
        """Count one more step for every tensor (bias corrections use the new count)."""
        for step in self.step.values():
            step.add_(1)

    def fused_kernel(self, params, grads, exp_avg, exp_avg_sq, steps) -> None:
        """torch's fused AdamW kernel on (chunks of) tensors; ``steps`` are not incremented."""
        torch._fused_adamw_(
            params,
            grads,
            exp_avg,
            exp_avg_sq,
            [],
            steps,
            lr=self.lr,
            beta1=self.betas[0],
            beta2=self.betas[1],
            weight_decay=self.weight_decay,
            eps=self.eps,
            amsgrad=False,
            maximize=False,
        )


@dataclass(frozen=True)
class GradiendContext:
    """What a GRADIEND means: its classes, source/target, objective and base model.

    Saved with the weights, so evaluation and the rewrite never need the params that trained it.
    """

    classes: list[str]
    source: str
    target: str
    objective: str
    base_model: str

    @property
    def pair(self) -> ClassPair:
        """The contrasted classes: ``classes[0]`` encodes to +1."""
        return ClassPair.of(self.classes)

    def encoding_direction(self) -> dict[str, int]:
        """Fixed metadata (never flipped): class A encodes to +1, class B to -1."""
        return {c: self.pair.direction(c) for c in self.classes}

    def strengthen_factor(self, cls: str) -> float:
        """Feature factor that raises P(cls) (§7.2)."""
        return self.pair.strengthen_factor(cls, self.source, self.target)

    def weaken_factor(self, cls: str) -> float:
        """Feature factor that lowers P(cls): the other class's strengthening factor."""
        return self.pair.weaken_factor(cls, self.source, self.target)


def save_gradiend(
    folder: str | Path,
    model: Gradiend,
    space: ParamSpace,
    context: GradiendContext,
    extra_files: dict[str, dict] | None = None,
) -> None:
    """Folder: model.safetensors, config.json (architecture + context), param_space.json,
    kept_indices.safetensors."""
    with atomic_dir(folder) as tmp:
        save_tensors(
            tmp / "model.safetensors",
            {k: v.detach().contiguous() for k, v in model.state_dict().items()},
        )
        write_json(
            tmp / "config.json",
            {
                "architecture": {
                    "input_dim": model.input_dim,
                    "latent_dim": model.latent_dim,
                    "activation_encoder": "tanh",
                    "input_normalization": model.input_normalization,
                    "activation_decoder": "identity",
                    "bias_decoder": True,
                },
                "context": {
                    **context.__dict__,
                    "feature_class_encoding_direction": context.encoding_direction(),
                },
            },
        )
        space.save(tmp)
        for name, payload in (extra_files or {}).items():
            write_json(tmp / name, payload)


def load_gradiend(folder: str | Path) -> tuple[Gradiend, ParamSpace, GradiendContext]:
    """Inverse of ``save_gradiend``: the model, the coordinates it covers, and its context."""
    folder = Path(folder)
    config = read_json(folder / "config.json", "GRADIEND config")
    arch = config["architecture"]
    model = Gradiend(arch["input_dim"], arch["latent_dim"], arch.get("input_normalization", "none"))
    model.load_state_dict(load_tensors(folder / "model.safetensors", "GRADIEND weights"))
    context = {
        k: v for k, v in config["context"].items() if k != "feature_class_encoding_direction"
    }
    return model, ParamSpace.load(folder), GradiendContext(**context)
