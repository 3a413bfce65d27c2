"""The GRADIEND encoder-decoder (docs/method.md §4.1-§4.2) and its save/load format.

    h = enc(s) = tanh(W_e ŝ + b_e)        W_e: (d, n), b_e: (d,)      s: a source gradient, (B, n)
    y = dec(h) = W_d h + b_d              W_d: (n, d), b_d: (n,)
    loss = mean((y - t)^2)                t: the target gradient, (B, n)

With MSE, tanh and a linear decoder every parameter gradient has a closed form, so a training step
needs no autograd graph over the (B, n) tensors: with R = 2 (y - t) / (B n),

    ∂/∂W_d = Rᵀ h      ∂/∂b_d = Σ_b R      ∂/∂z = (R W_d) ⊙ (1 - h²)      ∂/∂W_e = (∂/∂z)ᵀ s
    ∂/∂b_e = Σ_b ∂/∂z

and the gradients are handed to ``torch.optim.AdamW`` (fused). ``tests/test_model.py`` pins this
against autograd.

ŝ is the encoder's view of the source (§4.1, ``input_normalization``): ``unit`` (the default) is
s / ‖s‖, the gradient's direction, so the feature value never depends on the gradient's size (which
varies ~20x between base models and between objectives: a confident prediction has a small loss
gradient); ``none`` is s itself, the reference's encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from gradiend_core.base_model import ParamSpace
from gradiend_core.feature import ClassPair
from gradiend_core.io import atomic_dir, load_tensors, read_json, save_tensors, write_json

# How the encoder reads a source gradient (module docstring): its direction, or the raw vector.
INPUT_NORMALIZATIONS = ("unit", "none")


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
    def flip_sign(self, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Exact reparametrisation h -> -h: negate W_e, b_e and W_d; b_d is kept.

        tanh is odd, so enc'(s) = -enc(s) and dec'(-h) = -W_d(-h) + b_d = dec(h): reconstructions
        are unchanged (the reference also negates b_d, which is not exact — §4.4, §10). AdamW's
        first moments of the flipped tensors are negated too, so the optimiser keeps its course.
        """
        for p in (self.encoder_weight, self.encoder_bias, self.decoder_weight):
            p.neg_()
            if optimizer is not None and p in optimizer.state and "exp_avg" in optimizer.state[p]:
                optimizer.state[p]["exp_avg"].neg_()

    def norms(self) -> dict[str, float]:
        """Frobenius norms of W_e and W_d (tracked during training)."""
        return {
            "encoder_norm": float(self.encoder_weight.norm()),
            "decoder_norm": float(self.decoder_weight.norm()),
        }


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
