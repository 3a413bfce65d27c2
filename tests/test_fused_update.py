"""``Gradiend.fused_update`` (chunked in-place closed-form gradients + AdamW) against references
that share none of its code: autograd on a plain MSE loss with ``torch.optim.AdamW`` (single-tensor
implementation), and today's path ``closed_form_grads`` + ``torch.optim.AdamW(fused=True)``."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gradiend_core import gradiend as gradiend_module
from gradiend_core.gradiend import (
    UPDATE_CHUNK,
    Gradiend,
    GradiendAdamW,
    _chunks,
    _run,
)
from gradiend_core.segments import Segments
from gradiend_core.training import ADAM_EPS

LR, WD = 1e-2, 0.1
NAMES = ("encoder_weight", "encoder_bias", "decoder_weight", "decoder_bias")


def pair_of_models(n: int, latent_dim: int, norm: str, dtype: torch.dtype):
    """The model under test and the reference's parameters (leaf tensors), equal at the start."""
    model = Gradiend.initialised(n, seed=3, latent_dim=latent_dim, input_normalization=norm)
    model = model.to(dtype)
    ref = {k: v.detach().clone().requires_grad_(True) for k, v in model.named_parameters()}
    return model, ref


def reference_step(ref: dict, opt, source, target, unit: bool) -> float:
    """MSE(W_d tanh(W_e ŝ + b_e) + b_d, t) from scratch, autograd, one AdamW step."""
    s = source / source.norm(dim=1, keepdim=True) if unit else source
    h = torch.tanh(s @ ref["encoder_weight"].T + ref["encoder_bias"])
    loss = F.mse_loss(h @ ref["decoder_weight"].T + ref["decoder_bias"], target)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


def batches(n: int, batch: int, steps: int, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(n + batch)
    for _ in range(steps):
        yield (
            torch.randn(batch, n, generator=gen, dtype=dtype) * 3.0,
            torch.randn(batch, n, generator=gen, dtype=dtype) * 0.1,
        )


def assert_params_close(model: Gradiend, ref: dict, rtol: float, scale_atol: float = 0.0):
    for name in NAMES:
        expected = ref[name].detach()
        atol = scale_atol * float(expected.abs().max())
        torch.testing.assert_close(
            getattr(model, name).detach(), expected, rtol=rtol, atol=atol, msg=name
        )


@pytest.mark.parametrize("norm", ["unit", "none"])
@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize(
    ("n", "chunk"),
    [(1000, UPDATE_CHUNK), (1000, 64), (1000, 1000), (777, 100), (777, 1)],
)
def test_fused_update_equals_autograd_with_torch_adamw(n, chunk, batch, norm):
    """float64 end to end, so the comparison sees the algorithm, not float32 rounding: every
    parameter after each of 5 steps and every loss within 1e-6 relative. Chunks: one (chunk > n),
    exact multiples, a remainder (1000 = 15 x 64 + 40, 777 = 7 x 100 + 77), one coordinate."""
    model, ref = pair_of_models(n, 1, norm, torch.float64)
    ref_opt = torch.optim.AdamW(
        ref.values(), lr=LR, weight_decay=WD, eps=ADAM_EPS, foreach=False, fused=False
    )
    state = GradiendAdamW(model, lr=LR, weight_decay=WD, eps=ADAM_EPS)
    for source, target in batches(n, batch, 5, torch.float64):
        expected = reference_step(ref, ref_opt, source, target, unit=norm == "unit")
        assert model.fused_update(source, target, state, chunk=chunk) == pytest.approx(
            expected, rel=1e-6
        )
        assert_params_close(model, ref, rtol=1e-6)
    for name, p in ref.items():  # the optimizer state is torch's too
        torch.testing.assert_close(
            state.exp_avg[name], ref_opt.state[p]["exp_avg"], rtol=1e-6, atol=0
        )
        torch.testing.assert_close(
            state.exp_avg_sq[name], ref_opt.state[p]["exp_avg_sq"], rtol=1e-6, atol=0
        )
        assert float(state.step[name]) == float(ref_opt.state[p]["step"]) == 5


def test_fused_update_with_two_latent_dims_equals_autograd():
    """W_e's rows and W_d's columns are chunked separately for d > 1."""
    n, batch = 500, 3
    model, ref = pair_of_models(n, 2, "unit", torch.float64)
    ref_opt = torch.optim.AdamW(ref.values(), lr=LR, weight_decay=WD, eps=ADAM_EPS, foreach=False)
    state = GradiendAdamW(model, lr=LR, weight_decay=WD, eps=ADAM_EPS)
    for source, target in batches(n, batch, 4, torch.float64):
        expected = reference_step(ref, ref_opt, source, target, unit=True)
        loss = model.fused_update(source, target, state, chunk=48)
        assert loss == pytest.approx(expected, rel=1e-6)
        assert_params_close(model, ref, rtol=1e-6)


@pytest.mark.parametrize("batch", [1, 3])
def test_flip_sign_mid_training_keeps_fused_update_on_the_reference(batch):
    """A flip after step 3 negates W_e, b_e, W_d and their first moments; the reference does the
    same by hand on torch's AdamW state, and both runs stay equal afterwards."""
    n = 1000
    model, ref = pair_of_models(n, 1, "unit", torch.float64)
    ref_opt = torch.optim.AdamW(ref.values(), lr=LR, weight_decay=WD, eps=ADAM_EPS, foreach=False)
    state = GradiendAdamW(model, lr=LR, weight_decay=WD, eps=ADAM_EPS)
    for step, (source, target) in enumerate(batches(n, batch, 7, torch.float64), start=1):
        expected = reference_step(ref, ref_opt, source, target, unit=True)
        assert model.fused_update(source, target, state, chunk=64) == pytest.approx(
            expected, rel=1e-6
        )
        assert_params_close(model, ref, rtol=1e-6)
        if step == 3:
            second = {k: v.clone() for k, v in state.exp_avg_sq.items()}
            first_bias = state.exp_avg["decoder_bias"].clone()
            model.flip_sign(state)
            with torch.no_grad():
                for name in ("encoder_weight", "encoder_bias", "decoder_weight"):
                    ref[name].neg_()
                    ref_opt.state[ref[name]]["exp_avg"].neg_()
            assert_params_close(model, ref, rtol=1e-6)
            assert torch.equal(state.exp_avg["decoder_bias"], first_bias)
            for name, v in second.items():
                assert torch.equal(state.exp_avg_sq[name], v), name


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("n", "chunk", "batch"), [(1000, 64, 1), (1000, 64, 3), (777, 256, 2)])
def test_fused_update_equals_closed_form_grads_with_fused_adamw(n, chunk, batch, dtype):
    """Today's path (closed_form_grads + torch.optim.AdamW(fused=True)) up to float rounding:
    1e-6 relative in float64; in float32 within 5e-5 of each tensor's scale after 5 steps (the
    float32 closed form itself is ~2e-5 of the scale off the float64 values at B = 3, where the
    first AdamW steps magnify the rounding of W_e's near-zero gradient coordinates)."""
    old, _ = pair_of_models(n, 1, "unit", dtype)
    new, _ = pair_of_models(n, 1, "unit", dtype)
    old_opt = torch.optim.AdamW(old.parameters(), lr=LR, weight_decay=WD, eps=ADAM_EPS, fused=True)
    state = GradiendAdamW(new, lr=LR, weight_decay=WD, eps=ADAM_EPS)
    exact = dtype == torch.float64
    for source, target in batches(n, batch, 5, dtype):
        expected = old.closed_form_grads(source, target)
        old_opt.step()
        old_opt.zero_grad(set_to_none=True)
        rows = list(source), list(target)  # B row views instead of a (B, n) tensor
        loss = new.fused_update(*rows, state, chunk=chunk)
        assert loss == pytest.approx(expected, rel=1e-6 if exact else 1e-5)
        old_params = dict(old.named_parameters())
        if exact:
            assert_params_close(new, old_params, rtol=1e-6)
    assert_params_close(new, old_params, rtol=1e-6, scale_atol=0.0 if exact else 5e-5)


def test_fused_update_accepts_one_vector_and_leaves_inputs_and_threads_alone():
    n = 300
    a, _ = pair_of_models(n, 1, "unit", torch.float32)
    b, _ = pair_of_models(n, 1, "unit", torch.float32)
    sa, sb = GradiendAdamW(a, LR, WD), GradiendAdamW(b, LR, WD)
    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    s0, t0 = s.clone(), t.clone()
    threads = torch.get_num_threads()
    assert a.fused_update(s, t, sa, chunk=32) == b.fused_update(s[None], t[None], sb, chunk=32)
    assert torch.get_num_threads() == threads
    assert torch.equal(s, s0) and torch.equal(t, t0)
    for name in NAMES:
        assert torch.equal(getattr(a, name), getattr(b, name)), name
        assert getattr(a, name).grad is None
    with pytest.raises(ValueError):
        a.fused_update(s[:-1], t[:-1], sa)
    with pytest.raises(ValueError):
        a.fused_update(torch.randn(2, n), torch.randn(3, n), sa)


@pytest.mark.parametrize("norm", ["unit", "none"])
def test_non_finite_source_leaves_weights_and_state_untouched(norm):
    """With ``none`` an inf coordinate makes z infinite and h = tanh(z) exactly ±1, finite."""
    n = 200
    model, _ = pair_of_models(n, 1, norm, torch.float32)
    state = GradiendAdamW(model, LR, WD)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    for bad in (float("nan"), float("inf"), -float("inf")):
        source = torch.ones(n)
        source[17] = bad
        assert math.isnan(model.fused_update(source, torch.zeros(n), state, chunk=64))
        for name in NAMES:
            assert torch.equal(getattr(model, name), before[name]), name
            assert float(state.step[name]) == 0 and not state.exp_avg[name].any()


def test_non_finite_target_gives_a_non_finite_loss_and_keeps_the_encoder():
    """A bad target is found in the pass that steps W_d and b_d (they are spoilt and the caller
    stops); the encoder's tensors are stepped only after the loss is known, so they stay."""
    n = 200
    model, _ = pair_of_models(n, 1, "unit", torch.float32)
    state = GradiendAdamW(model, LR, WD)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    target = torch.zeros(n)
    target[150] = float("inf")
    assert not math.isfinite(model.fused_update(torch.ones(n), target, state, chunk=64))
    for name in ("encoder_weight", "encoder_bias"):
        assert torch.equal(getattr(model, name), before[name]), name
        assert not state.exp_avg[name].any() and not state.exp_avg_sq[name].any()


def random_segments(row: torch.Tensor, sizes: list[int]) -> Segments:
    """``row`` cut into pieces of ``sizes`` (copies, so no piece is a view of the row)."""
    assert sum(sizes) == row.numel()
    return Segments(piece.clone() for piece in torch.split(row, sizes))


@pytest.mark.parametrize("batch", [1, 3])
def test_segments_rows_equal_autograd_with_torch_adamw(batch):
    """Rows given as pieces (θ's tensors, one of them empty and several shorter than a chunk):
    float64 against the autograd reference as above, 4 steps."""
    n, sizes = 1000, [300, 0, 7, 500, 1, 192]
    model, ref = pair_of_models(n, 1, "unit", torch.float64)
    ref_opt = torch.optim.AdamW(
        ref.values(), lr=LR, weight_decay=WD, eps=ADAM_EPS, foreach=False, fused=False
    )
    state = GradiendAdamW(model, lr=LR, weight_decay=WD, eps=ADAM_EPS)
    for source, target in batches(n, batch, 4, torch.float64):
        expected = reference_step(ref, ref_opt, source, target, unit=True)
        rows_s = [random_segments(r, sizes) for r in source]
        rows_t = [random_segments(r, sizes[::-1]) for r in target]  # other cuts than the source
        loss = model.fused_update(rows_s if batch > 1 else rows_s[0], rows_t, state, chunk=128)
        assert loss == pytest.approx(expected, rel=1e-6)
        assert_params_close(model, ref, rtol=1e-6)


def test_segments_of_the_wrong_size_are_refused():
    model, _ = pair_of_models(10, 1, "unit", torch.float32)
    state = GradiendAdamW(model, LR, WD)
    with pytest.raises(ValueError, match="10 coordinates"):
        model.fused_update(Segments([torch.zeros(4), torch.zeros(5)]), torch.zeros(10), state)
    with pytest.raises(ValueError, match="10 coordinates"):
        model.fused_update(Segments([torch.zeros(2, 5)]), torch.zeros(10), state)


def test_chunks_split_only_at_piece_boundaries_and_the_chunk_size():
    rows = [torch.zeros(10), Segments([torch.zeros(3), torch.zeros(0), torch.zeros(7)])]
    assert _chunks(rows[:1], 10, 4) == [(0, 4), (4, 4), (8, 2)]
    assert _chunks(rows, 10, 4) == [(0, 3), (3, 4), (7, 3)]


@pytest.mark.parametrize("workers", [2, 3])
def test_workers_give_the_same_bytes_as_one_thread(monkeypatch, workers):
    """Above ``UPDATE_PARALLEL_MIN`` the chunks are shared among threads: same loss, weights and
    AdamW state to the bit as one thread, over steps with a flip between them; torch's thread
    setting is restored."""
    n, batch = 5000, 2
    runs = []
    for parallel in (False, True):
        monkeypatch.setattr(gradiend_module, "UPDATE_PARALLEL_MIN", 0 if parallel else n + 1)
        threads = torch.get_num_threads()
        torch.set_num_threads(workers)
        try:
            model, _ = pair_of_models(n, 1, "unit", torch.float32)
            state = GradiendAdamW(model, LR, WD)
            losses = []
            for step, (s, t) in enumerate(batches(n, batch, 4, torch.float32)):
                losses.append(model.fused_update(s, t, state, chunk=256))
                if step == 1:
                    model.flip_sign(state)
            assert torch.get_num_threads() == workers
        finally:
            torch.set_num_threads(threads)
        runs.append((losses, model, state))
    (l1, m1, s1), (l2, m2, s2) = runs
    assert l1 == l2
    for name in NAMES:
        assert torch.equal(getattr(m1, name), getattr(m2, name)), name
        assert torch.equal(s1.exp_avg[name], s2.exp_avg[name]), name
        assert torch.equal(s1.exp_avg_sq[name], s2.exp_avg_sq[name]), name


def test_run_hands_every_chunk_to_exactly_one_worker():
    """``_run``: the indices 0..count-1, each once, over the calling thread and the pool's; with
    one worker (or one chunk) everything runs on the calling thread, in order."""
    import threading

    for workers, count in ((1, 7), (2, 1), (2, 50), (3, 50), (4, 3)):
        seen: list[tuple[int, str]] = []
        lock = threading.Lock()

        def work(indices, seen=seen, lock=lock):
            for ci in indices:
                with lock:
                    seen.append((ci, threading.current_thread().name))

        _run(work, count, workers)
        assert sorted(ci for ci, _ in seen) == list(range(count))
        if workers == 1 or count == 1:
            assert [ci for ci, _ in seen] == list(range(count))
            assert {name for _, name in seen} == {threading.current_thread().name}


def test_a_worker_error_is_raised_to_the_caller():
    def work(indices):
        for ci in indices:
            if ci == 5:
                raise RuntimeError("chunk 5 failed")

    with pytest.raises(RuntimeError, match="chunk 5 failed"):
        _run(work, 20, 2)
