"""The weight edit θ' = θ + η·dec(f) on θ's kept coordinates (docs/method.md §7.1).

The edit is always computed from saved originals and undone by copying them back, so a grid of
edits leaves the model bit-identical to where it started (no deep copy of the model, no drift from
adding and subtracting). The decoder grid and the rewrite use this one implementation.
"""

from __future__ import annotations

import torch
from torch import nn

from gradiend_core.base_model import ParamSpace
from gradiend_core.gradiend import Gradiend


@torch.no_grad()
def update_direction(model: Gradiend, feature_factor: float) -> torch.Tensor:
    """dec(f) = W_d f + b_d, shape (n,): the direction added to θ, scaled by η."""
    h = torch.full((model.latent_dim,), float(feature_factor), device=model.decoder_weight.device)
    return model.decode(h)


class WeightEditor:
    """Applies θ' = θ + δ on the kept coordinates of θ and restores θ exactly."""

    def __init__(self, model: nn.Module, space: ParamSpace):
        named = dict(model.named_parameters())
        self.targets = []
        for name, idx in zip(space.names, space.local_indices(), strict=True):
            flat = named[name].data.view(-1)
            idx = None if idx is None else idx.to(flat.device)
            self.targets.append((flat, idx, (flat if idx is None else flat[idx]).clone()))

    @torch.no_grad()
    def apply(self, delta: torch.Tensor) -> None:
        """Set θ to original + ``delta`` (a flat vector in θ's kept order, shape (n,))."""
        at = 0
        for flat, idx, original in self.targets:
            part = delta[at : at + original.numel()].to(flat.device, flat.dtype)
            at += original.numel()
            if idx is None:
                flat.copy_(original + part)
            else:
                flat[idx] = original + part

    @torch.no_grad()
    def apply_gradiend(
        self, gradiend: Gradiend, feature_factor: float, learning_rate: float
    ) -> None:
        """θ' = θ + η·dec(f)."""
        self.apply(learning_rate * update_direction(gradiend, feature_factor))

    @torch.no_grad()
    def restore(self) -> None:
        """Copy the saved originals back (bit-exact)."""
        for flat, idx, original in self.targets:
            if idx is None:
                flat.copy_(original)
            else:
                flat[idx] = original
