"""The GRADIEND (docs/method.md §4.1-§4.4, §7.2): closed-form gradients vs autograd, exact sign
flip, init, save/load, factors."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from gradiend_core.base_model import ParamSpace
from gradiend_core.gradiend import Gradiend, GradiendContext, load_gradiend, save_gradiend

N = 37


def random_gradiend(n: int, latent_dim: int, seed: int) -> Gradiend:
    model = Gradiend(n, latent_dim)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model


def autograd_reference(
    model: Gradiend, source: torch.Tensor, target: torch.Tensor
) -> tuple[float, dict[str, torch.Tensor]]:
    """MSE(W_d tanh(W_e s + b_e) + b_d, t) built from scratch, differentiated by autograd."""
    params = {
        k: v.detach().double().clone().requires_grad_(True) for k, v in model.named_parameters()
    }
    s, t = (
        source.double().reshape(-1, model.input_dim),
        target.double().reshape(-1, model.input_dim),
    )
    h = torch.tanh(s @ params["encoder_weight"].T + params["encoder_bias"])
    y = h @ params["decoder_weight"].T + params["decoder_bias"]
    loss = ((y - t) ** 2).mean()
    grads = torch.autograd.grad(loss, list(params.values()))
    return float(loss.detach()), dict(zip(params, grads, strict=True))


@pytest.mark.parametrize("latent_dim", [1, 2])
@pytest.mark.parametrize("batch", [1, 3])
def test_closed_form_grads_equal_autograd(batch, latent_dim):
    model = random_gradiend(N, latent_dim, seed=batch * 10 + latent_dim)
    gen = torch.Generator().manual_seed(99)
    source, target = torch.randn(batch, N, generator=gen), torch.randn(batch, N, generator=gen)
    expected_loss, expected = autograd_reference(model, source, target)
    loss = model.closed_form_grads(source, target)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name
        torch.testing.assert_close(p.grad.double(), expected[name], atol=1e-6, rtol=1e-5)
    # Inputs are left untouched.
    torch.testing.assert_close(
        source, torch.randn(batch, N, generator=torch.Generator().manual_seed(99))
    )


def test_unit_input_normalization_reads_directions_and_keeps_closed_form_exact():
    """Encoder input ŝ = s / ‖s‖ (train.input_normalization: unit): the closed form still equals
    autograd on the normalised inputs, the encoding ignores the gradient's size, and a zero row
    stays zero instead of dividing by 0."""
    raw = random_gradiend(N, 1, seed=8)
    unit = Gradiend(N, 1, input_normalization="unit")
    unit.load_state_dict(raw.state_dict())
    gen = torch.Generator().manual_seed(3)
    source, target = torch.randn(3, N, generator=gen), torch.randn(3, N, generator=gen)
    by_hand = source / source.norm(dim=1, keepdim=True)  # independent of the module's code
    expected_loss, expected = autograd_reference(raw, by_hand, target)
    assert unit.closed_form_grads(source, target) == pytest.approx(expected_loss, rel=1e-5)
    for name, p in unit.named_parameters():
        torch.testing.assert_close(p.grad.double(), expected[name], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(unit.encode(source * 25.0), raw.encode(by_hand))  # size-free
    assert torch.equal(unit.encode(torch.zeros(1, N)), torch.tanh(unit.encoder_bias)[None])
    with pytest.raises(ValueError):
        Gradiend(N, 1, input_normalization="l1")


def test_closed_form_grads_accept_a_single_vector():
    model = random_gradiend(N, 1, seed=5)
    gen = torch.Generator().manual_seed(1)
    s, t = torch.randn(N, generator=gen), torch.randn(N, generator=gen)
    expected_loss, expected = autograd_reference(model, s[None], t[None])
    assert model.closed_form_grads(s, t) == pytest.approx(expected_loss, rel=1e-5)
    torch.testing.assert_close(
        model.encoder_weight.grad.double(), expected["encoder_weight"], atol=1e-6, rtol=1e-5
    )


def test_forward_shapes_and_definition():
    model = random_gradiend(N, 2, seed=3)
    s = torch.randn(4, N)
    h = model.encode(s)
    assert h.shape == (4, 2) and model.encode(s[0]).shape == (2,)
    torch.testing.assert_close(h, torch.tanh(s @ model.encoder_weight.T + model.encoder_bias))
    torch.testing.assert_close(model(s), h @ model.decoder_weight.T + model.decoder_bias)
    assert model(s).shape == (4, N)


def test_flip_sign_negates_encodings_keeps_reconstructions_and_adam_moments():
    torch.manual_seed(0)
    model = random_gradiend(N, 1, seed=7)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    s, t = torch.randn(3, N), torch.randn(3, N)
    for _ in range(2):
        model.closed_form_grads(s, t)
        optimizer.step()
    before_enc, before_rec = model.encode(s).detach().clone(), model(s).detach().clone()
    moments = {n: optimizer.state[p]["exp_avg"].clone() for n, p in model.named_parameters()}
    second = {n: optimizer.state[p]["exp_avg_sq"].clone() for n, p in model.named_parameters()}
    bias_before = model.decoder_bias.detach().clone()
    model.flip_sign(optimizer)
    torch.testing.assert_close(model.encode(s), -before_enc, atol=1e-7, rtol=0)
    torch.testing.assert_close(model(s), before_rec, atol=1e-6, rtol=0)
    assert torch.equal(model.decoder_bias, bias_before)  # exact reparametrisation keeps b_d
    named = dict(model.named_parameters())
    for name in ("encoder_weight", "encoder_bias", "decoder_weight"):
        assert torch.equal(optimizer.state[named[name]]["exp_avg"], -moments[name]), name
    assert torch.equal(optimizer.state[named["decoder_bias"]]["exp_avg"], moments["decoder_bias"])
    for name, p in named.items():
        assert torch.equal(optimizer.state[p]["exp_avg_sq"], second[name]), name
    # The next optimiser step of the flipped model is the flip of the unflipped model's next step.
    twin = random_gradiend(N, 1, seed=7)
    twin_opt = torch.optim.AdamW(twin.parameters(), lr=1e-2)
    for _ in range(2):
        twin.closed_form_grads(s, t)
        twin_opt.step()
    twin.closed_form_grads(s, t)
    twin_opt.step()
    model.closed_form_grads(s, t)
    optimizer.step()
    torch.testing.assert_close(model(s), twin(s), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model.encode(s), -twin.encode(s), atol=1e-6, rtol=1e-5)


def test_flip_sign_without_optimizer_is_an_involution():
    model = random_gradiend(N, 1, seed=8)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.flip_sign()
    assert torch.equal(model.encoder_weight, -state["encoder_weight"])
    model.flip_sign()
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k])


@pytest.mark.parametrize(("n", "latent_dim"), [(400, 1), (9, 2)])
def test_initialised_bounds_and_seed(n, latent_dim):
    model = Gradiend.initialised(n, seed=3, latent_dim=latent_dim)
    bound = 1 / n**0.5
    assert model.encoder_weight.abs().max() <= bound and model.encoder_bias.abs().max() <= bound
    x = model.encoder_weight.max().item()
    assert 0 < x <= bound
    assert model.decoder_weight.abs().max() <= x and model.decoder_bias.abs().max() <= x
    if n >= 100:  # uniform spread over the whole interval, not a constant
        assert model.encoder_weight.min() < -0.8 * bound and x > 0.8 * bound
        assert model.decoder_weight.min() < -0.8 * x and model.decoder_weight.max() > 0.8 * x
    same = Gradiend.initialised(n, seed=3, latent_dim=latent_dim)
    other = Gradiend.initialised(n, seed=4, latent_dim=latent_dim)
    for k, v in model.state_dict().items():
        assert torch.equal(v, same.state_dict()[k])
    assert not torch.equal(model.encoder_weight, other.encoder_weight)


def test_save_and_load_round_trip(tmp_path):
    space = ParamSpace(("a.weight", "b.bias"), ((4, 5), (7,)))
    kept = torch.tensor([26, 0, 3, 19, 20])
    pruned = space.with_kept(kept)
    model = random_gradiend(pruned.size, 1, seed=2)
    context = GradiendContext(["he", "she"], "alternative", "diff", "clm_next_token", "models/base")
    folder = tmp_path / "gradiend"
    save_gradiend(folder, model, pruned, context, {"training.json": {"x": 1}})
    loaded, loaded_space, loaded_context = load_gradiend(folder)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    assert loaded_space.names == space.names and loaded_space.shapes == space.shapes
    assert loaded_space.kept.tolist() == [0, 3, 19, 20, 26]
    assert loaded_space.size == 5 and loaded_space.full_size == 27
    assert loaded_context == context
    config = json.loads((folder / "config.json").read_text())
    assert config["context"]["feature_class_encoding_direction"] == {"he": 1, "she": -1}
    assert config["architecture"]["input_dim"] == 5
    assert json.loads((folder / "training.json").read_text()) == {"x": 1}
    assert loaded.input_normalization == "none"
    unit = Gradiend(pruned.size, 1, input_normalization="unit")
    save_gradiend(tmp_path / "unit", unit, pruned, context)
    assert load_gradiend(tmp_path / "unit")[0].input_normalization == "unit"
    # An unpruned space has no kept file and loads as 'all coordinates'.
    save_gradiend(folder, random_gradiend(27, 1, seed=1), space, context)
    assert load_gradiend(folder)[1].kept is None
    assert not (folder / "training.json").exists()  # the folder is replaced as a whole


def test_param_space_local_indices_split_kept_by_tensor():
    space = ParamSpace(("a", "b", "c"), ((2, 3), (4,), (1, 2)))
    assert space.offsets() == [0, 6, 10] and space.full_size == 12
    pruned = space.with_kept(torch.tensor([11, 1, 6, 9, 5]))
    assert [None if i is None else i.tolist() for i in pruned.local_indices()] == [
        [1, 5],
        [0, 3],
        [1],
    ]
    assert pruned.share_per_tensor() == {"a": 2, "b": 2, "c": 1}
    assert space.local_indices() == [None, None, None]


# Worked out by hand (docs/method.md §7.2): a row encodes to the direction of its source class, and
# the decoder returns the target vector, a loss gradient that raises the loss of its word.
@pytest.mark.parametrize(
    ("source", "target", "strengthen_he", "strengthen_she"),
    [
        ("alternative", "diff", 1.0, -1.0),  # dec(+1) ~ g(she) - g(he) of she rows: lowers L(he)
        ("alternative", "factual", 1.0, -1.0),  # dec(+1) ~ g(she) of she rows: raises L(she)
        ("alternative", "alternative", -1.0, 1.0),  # dec(+1) ~ g(he) of she rows: raises L(he)
        ("factual", "diff", -1.0, 1.0),  # dec(+1) ~ g(he) - g(she) of he rows: raises L(he)
        ("factual", "factual", -1.0, 1.0),
        ("factual", "alternative", 1.0, -1.0),  # dec(+1) ~ g(she) of he rows: raises L(she)
        ("diff", "diff", -1.0, 1.0),
        ("diff", "alternative", 1.0, -1.0),
    ],
)
def test_feature_factor_table(source, target, strengthen_he, strengthen_she):
    context = GradiendContext(["he", "she"], source, target, "clm_mlm_head", "models/base")
    assert context.encoding_direction() == {"he": 1, "she": -1}
    assert context.strengthen_factor("he") == strengthen_he
    assert context.strengthen_factor("she") == strengthen_she
    assert context.weaken_factor("he") == strengthen_she
    assert context.weaken_factor("she") == strengthen_he


def test_one_gguf_parse_shares_the_reader_of_a_path_and_restores_gguf(monkeypatch):
    import gguf

    from gradiend_core.base_model import _one_gguf_parse

    made = []

    class CountingReader:
        def __init__(self, path, mode="r"):
            made.append((path, mode))

    monkeypatch.setattr(gguf, "GGUFReader", CountingReader)
    with _one_gguf_parse():
        first = gguf.GGUFReader("a.gguf")
        assert gguf.GGUFReader("a.gguf") is first  # the config, tokenizer and weights share it
        assert gguf.GGUFReader("b.gguf") is not first
    assert made == [("a.gguf", "r"), ("b.gguf", "r")]
    assert gguf.GGUFReader is CountingReader  # restored


def test_one_gguf_parse_builds_each_tensor_name_map_once_and_restores_gguf(monkeypatch):
    import gguf

    from gradiend_core.base_model import _one_gguf_parse

    built = []
    original = gguf.get_tensor_name_map

    def counting_map(arch, n_blocks):
        built.append((arch, n_blocks))
        return object()

    monkeypatch.setattr(gguf, "get_tensor_name_map", counting_map)
    with _one_gguf_parse():
        first = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 30)
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 30) is first  # every submodule
        assert gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, 2) is not first
    assert built == [(gguf.MODEL_ARCH.LLAMA, 30), (gguf.MODEL_ARCH.LLAMA, 2)]
    assert gguf.get_tensor_name_map is counting_map  # restored
    # transformers only reads the map (get_name), so one built map serves every submodule
    real = original(gguf.MODEL_ARCH.LLAMA, 2)
    assert real.get_name("model.layers.1.self_attn.q_proj") == "blk.1.attn_q"


def test_configure_torch_sets_threads_and_deterministic_kernels():
    from gradiend_core.runtime import configure_torch

    before = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled())
    try:
        torch.use_deterministic_algorithms(False)
        configure_torch(1)
        assert torch.get_num_threads() == 1
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()
    finally:
        torch.set_num_threads(before[0])
        torch.use_deterministic_algorithms(before[1], warn_only=True)


def test_allocator_tuning_asks_glibc_to_keep_freed_blocks(monkeypatch):
    """On glibc, tune_allocator raises the mmap threshold to 1 GiB and the trim threshold to the
    largest int (freed blocks stay with the process for reuse); GRADIEND_MALLOC_TUNE=0 and other C
    libraries leave the allocator alone."""
    import ctypes
    import platform

    from gradiend_core import runtime

    calls = []

    def mallopt(param, value):
        calls.append((param, value))
        return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: SimpleNamespace(mallopt=mallopt))
    monkeypatch.setattr(platform, "libc_ver", lambda: ("glibc", "2.36"))
    monkeypatch.delenv("GRADIEND_MALLOC_TUNE", raising=False)
    assert runtime.tune_allocator() is True
    assert calls == [(-3, 2**30), (-1, 2**31 - 1)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD (malloc.h)
    calls.clear()
    monkeypatch.setenv("GRADIEND_MALLOC_TUNE", "0")
    assert runtime.tune_allocator() is False and calls == []
    monkeypatch.delenv("GRADIEND_MALLOC_TUNE")
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))  # musl, macOS: not glibc
    assert runtime.tune_allocator() is False and calls == []
